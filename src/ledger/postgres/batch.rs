//! Group commit: a writer task takes every operation queued while it was busy — reserves,
//! settles, refunds — and runs them in ONE transaction. Two writers per ledger (per replica)
//! take turns, so one batch gathers and runs while the other waits for its COMMIT.
//!
//! Exactness without a savepoint per operation:
//!
//! 1. The reservations the batch closes are locked in id order, with their lines.
//! 2. Every bucket the batch may change is locked (created at 0 if missing) in byte order, with
//!    one upsert that reads its `used`. Reservation rows before buckets, each in one order, is
//!    the order of the one-operation path too, so batches of different replicas cannot deadlock
//!    each other.
//! 3. With those rows locked, every settle and refund ([`state::close`]), then every reserve in
//!    queue order, is decided in memory exactly as the database would decide it.
//! 4. The writes: every closed reservation, its lines and usage rows (one statement), new
//!    reservations (one statement for those without an idempotency key), all pipelined in one
//!    round trip; then each changed bucket's final `used` in one statement, sent with COMMIT.
//!
//! `BEGIN` goes out with the first lock and the last write with `COMMIT`: a batch of reserves
//! is three round trips (BEGIN + buckets, reservations, `used` + COMMIT), one more when it also
//! closes reservations.
//!
//! The one thing memory cannot know is whether an idempotency key is already taken. A reserve
//! with a key therefore ends a pipelined segment: its answer is read before anything after it is
//! decided, and if the key was taken its planned charge is taken back.
//!
//! An error before the commit rolls the whole batch back. If it came from one operation (a
//! string PostgreSQL refuses, say) or was a serialization failure or deadlock, each operation
//! reruns alone through the one-operation path (which retries), so a bad request fails alone;
//! if the connection or server is gone, every operation fails with it at once. A COMMIT whose
//! answer never comes is asked about on another connection ([`unanswered`]): applied, the batch's
//! answers stand; rolled back, each operation runs again; unknowable, the batch fails. (The last
//! write failing in PostgreSQL is not that case: the transaction was aborted, and the COMMIT
//! behind it rolled it back.)

pub(super) mod unanswered;
mod writes;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::pool::{Conn, Pool};
use super::schema::Statements;
use super::state::{self, Close, HeldLine, Transition};
use super::{Charge, LedgerError, Plan, ReservationId, ReserveOutcome, ReserveRequest, plan};
use crate::ledger::{ReservationState, Resolution, expiry};
use unanswered::Unanswered;
use writes::{reserve, set_used, write_closes};

/// Most operations in one transaction.
const MAX_BATCH: usize = 256;
/// Operations waiting for a writer before callers wait to queue.
const QUEUE: usize = 4096;
/// Writers per ledger: while one batch waits for its COMMIT, the next one gathers and runs up
/// to the first row the committing batch still holds.
const WRITERS: usize = 2;

pub(super) type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// An operation for the writers.
pub(super) enum Op {
    Reserve(ReserveRequest, Reply<ReserveOutcome>),
    Close(ReservationId, Close, Timestamp, Reply<Resolution>),
    /// Answered once its batch, and so every operation queued before it, is done with
    /// ([`Writers::drained`]).
    Flush(oneshot::Sender<()>),
}

/// The writers' queue, and how many batches they are running.
pub(super) struct Writers {
    pub queue: mpsc::Sender<Op>,
    busy: Arc<AtomicUsize>,
}

/// Starts the writers; they end when the returned queue (the ledger) is dropped.
pub(super) fn spawn(pool: Arc<Pool>) -> Writers {
    let (queue, waiting) = mpsc::channel(QUEUE);
    let waiting = Arc::new(Mutex::new(waiting));
    let busy = Arc::new(AtomicUsize::new(0));
    for _ in 0..WRITERS {
        let requeue = queue.downgrade();
        tokio::spawn(write(
            Arc::clone(&pool),
            Arc::clone(&waiting),
            Arc::clone(&busy),
            requeue,
        ));
    }
    Writers { queue, busy }
}

impl Writers {
    /// Waits until every operation queued so far is committed (or failed) and answered — the
    /// refunds of requests cut at shutdown among them — for at most `limit`. Whether it was.
    pub(super) async fn drained(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            let (done, flushed) = oneshot::channel();
            if self.queue.send(Op::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
            // A batch the other writer took before the flush's is counted busy: it was
            // counted before the flush's writer could take the queue. Operations queued since
            // (a refund of a reserve whose caller left) count too, once taken; an empty queue
            // seen twice lets one just taken be counted.
            let mut idle = 0;
            while idle < 2 {
                let empty = self.queue.capacity() == self.queue.max_capacity()
                    && self.busy.load(Ordering::SeqCst) == 0;
                idle = if empty { idle + 1 } else { 0 };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    }
}

/// Takes what queued while it was busy, commits it, and again. `requeue` queues the refunds of
/// reservations whose callers went away while their batch ran. A batch taken is counted in
/// `busy` before the queue is let go, until it is answered.
async fn write(
    pool: Arc<Pool>,
    waiting: Arc<Mutex<mpsc::Receiver<Op>>>,
    busy: Arc<AtomicUsize>,
    requeue: mpsc::WeakSender<Op>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = {
            let mut waiting = waiting.lock().await;
            let taken = waiting.recv_many(&mut batch, MAX_BATCH).await;
            busy.fetch_add(1, Ordering::SeqCst);
            taken
        };
        if taken == 0 {
            busy.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let flushes = commit(&pool, std::mem::take(&mut batch), &requeue).await;
        busy.fetch_sub(1, Ordering::SeqCst);
        for flushed in flushes {
            let _ = flushed.send(());
        }
    }
}

/// Queues the refund of reservation `id`, whose caller went away while its batch ran: nobody
/// holds it to settle or refund it, and it would hold its budget (and its `Idempotency-Key`)
/// until the sweep charged it.
pub(super) fn refund_abandoned(requeue: &mpsc::WeakSender<Op>, id: ReservationId, now: Timestamp) {
    // The ledger is gone: it stays as it is (a final charge charged, an open one swept at what it
    // holds when a ledger opens on the database next).
    let Some(queue) = requeue.upgrade() else {
        return;
    };
    tracing::debug!(
        reservation = id.0,
        "caller gone during its reserve; refunding"
    );
    // Queued at once where there is room, whatever becomes of the task below (a runtime shutting
    // down drops it unpolled); the writers drain the queue before they end.
    let (reply, answer) = oneshot::channel();
    let waiting = match queue.try_send(Op::Close(id, Close::Refund, now, reply)) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(op)) => Some(op),
        Err(mpsc::error::TrySendError::Closed(_)) => return,
    };
    // (A future dropped off any runtime cannot wait: that one try, and the sweep the rest.)
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Retried while the database fails transiently, as the proxy retries its own refunds: the
    // reservation may be a final charge, which no sweep gives back. Only a weak sender is held
    // between tries, so the ledger can still close.
    let requeue = queue.downgrade();
    runtime.spawn(async move {
        use backon::Retryable;
        if let Some(op) = waiting
            && queue.send(op).await.is_err()
        {
            return;
        }
        drop(queue);
        let Err(error) = answer.await.unwrap_or(Err(LedgerError::Stopped)) else {
            return;
        };
        if !error.transient() {
            tracing::error!(%error, reservation = id.0, "refund of an abandoned reserve failed");
            return;
        }
        tracing::warn!(%error, reservation = id.0, "refund of an abandoned reserve failed; retrying");
        let refund = || {
            let requeue = requeue.clone();
            async move {
                let queue = requeue.upgrade().ok_or(LedgerError::Stopped)?;
                let (reply, answer) = oneshot::channel();
                queue
                    .send(Op::Close(id, Close::Refund, now, reply))
                    .await
                    .map_err(|_| LedgerError::Stopped)?;
                drop(queue);
                answer.await.map_err(|_| LedgerError::Stopped)?
            }
        };
        let refunded = refund
            .retry(crate::ledger::correction_backoff(ABANDONED_REFUND_FOR))
            .sleep(tokio::time::sleep)
            .when(LedgerError::transient)
            .notify(|error, after| {
                tracing::warn!(%error, reservation = id.0, ?after, "refund of an abandoned reserve failed; retrying");
            })
            .await;
        if let Err(error) = refunded {
            tracing::error!(%error, reservation = id.0, "refund of an abandoned reserve failed");
        }
    });
}

/// How long the refund of an abandoned reserve is retried: as long as a reservation may stay
/// open (the proxy's `RESERVATION_TTL`).
const ABANDONED_REFUND_FOR: Duration = Duration::from_secs(900);

/// A settle or refund of the batch.
struct Closing {
    id: ReservationId,
    how: Close,
    now: Timestamp,
}

/// Runs the batch and answers each caller once the batch is durable; returns its flushes, to
/// answer.
async fn commit(
    pool: &Pool,
    batch: Vec<Op>,
    requeue: &mpsc::WeakSender<Op>,
) -> Vec<oneshot::Sender<()>> {
    let mut reserves = Vec::new();
    let mut closes = Vec::new();
    let mut flushes = Vec::new();
    for op in batch {
        match op {
            Op::Flush(done) => flushes.push(done),
            // Its caller went away while it queued (a client gone while the database was slow):
            // nothing is charged, rather than charged and refunded after the backlog, holding
            // budgets meanwhile that live callers would be refused for.
            Op::Reserve(_, reply) if reply.is_closed() => {}
            // Requests whose lines cannot be stored are answered at once.
            Op::Reserve(request, reply) => match charges_of(&request) {
                Ok(_) => reserves.push((request, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Op::Close(id, how, now, reply) => closes.push((Closing { id, how, now }, reply)),
        }
    }
    let requests: Vec<&ReserveRequest> = reserves.iter().map(|(r, _)| r).collect();
    let closing: Vec<&Closing> = closes.iter().map(|(c, _)| c).collect();
    let answers = match pool.get().await {
        Ok(mut pooled) => match run(&mut pooled, &requests, &closing).await {
            Ok((reserved, closed)) => (reserved.into_iter().map(Ok).collect(), closed),
            Err(Failure::Commit(e, unanswered)) => {
                // Closed now: PostgreSQL ends the transaction if the COMMIT never reached it.
                drop(pooled);
                after_unanswered(pool, e, unanswered, &requests, &closing).await
            }
            // The connection or the server is gone: running each operation alone would only
            // wait for the same failure once per operation, the writer stalled meanwhile.
            Err(Failure::Before(e)) if e.transient() && !super::retryable(&e) => (
                all_failed(&e, requests.len()),
                all_failed(&e, closing.len()),
            ),
            Err(Failure::Before(error)) => {
                tracing::debug!(%error, reserves = requests.len(), closes = closing.len(),
                    "ledger batch rolled back; running its operations one by one");
                drop(pooled);
                one_by_one(pool, &requests, &closing).await
            }
        },
        Err(e) => (
            all_failed(&e, requests.len()),
            all_failed(&e, closing.len()),
        ),
    };
    for ((request, reply), answer) in reserves.into_iter().zip(answers.0) {
        if let Err(Ok(ReserveOutcome::Reserved { id, .. })) = reply.send(answer) {
            refund_abandoned(requeue, id, request.now);
        }
    }
    for ((_, reply), answer) in closes.into_iter().zip(answers.1) {
        let _ = reply.send(answer);
    }
    flushes
}

/// Each caller's answer: reserves in queue order, then closes in queue order.
type Replies = (
    Vec<Result<ReserveOutcome, LedgerError>>,
    Vec<Result<Resolution, LedgerError>>,
);

/// Runs every operation of a batch that did not commit alone, through the one-operation path.
async fn one_by_one(pool: &Pool, requests: &[&ReserveRequest], closing: &[&Closing]) -> Replies {
    let mut closed = Vec::with_capacity(closing.len());
    for c in closing {
        closed.push(super::alone::close_alone(pool, c.id, &c.how, c.now).await);
    }
    let mut reserved = Vec::with_capacity(requests.len());
    for request in requests {
        reserved.push(super::alone::reserve_alone(pool, request).await);
    }
    (reserved, closed)
}

/// The answers of a batch whose COMMIT failed: what it decided if it was applied, its
/// operations run again if it was not, `e` for each if that cannot be told.
async fn after_unanswered(
    pool: &Pool,
    e: LedgerError,
    unanswered: Option<Box<Unanswered>>,
    requests: &[&ReserveRequest],
    closing: &[&Closing],
) -> Replies {
    let (reserves, closes) = (requests.len(), closing.len());
    let Some(batch) = unanswered else {
        tracing::error!(error = %e, reserves, closes,
            "a ledger batch's writes did not all go through, and it may have committed without \
             them: its operations failed, and its reservations may be charged without their \
             buckets");
        return (all_failed(&e, reserves), all_failed(&e, closes));
    };
    let checked = batch.check(pool).await;
    match checked {
        Ok(Some((reserved, closed))) => {
            tracing::warn!(error = %e, reserves, closes,
                "a ledger batch's COMMIT went unanswered; it was applied");
            (reserved.into_iter().map(Ok).collect(), closed)
        }
        Ok(None) => {
            tracing::warn!(error = %e, reserves, closes,
                "a ledger batch's COMMIT went unanswered; it was rolled back, running it again");
            one_by_one(pool, requests, closing).await
        }
        Err(check) => {
            tracing::error!(error = %e, %check, reserves, closes,
                "a ledger batch's COMMIT went unanswered and whether it was applied cannot be \
                 told: its reservations may stay charged until refunded by hand");
            (all_failed(&e, reserves), all_failed(&e, closes))
        }
    }
}

/// The same failure for each of `n` operations.
fn all_failed<T>(e: &LedgerError, n: usize) -> Vec<Result<T, LedgerError>> {
    let (message, transient) = (e.to_string(), e.transient());
    (0..n)
        .map(|_| {
            Err(LedgerError::Commit {
                message: message.clone(),
                transient,
            })
        })
        .collect()
}

fn charges_of(request: &ReserveRequest) -> Result<Vec<Charge<'_>>, LedgerError> {
    request.lines.iter().map(Charge::of).collect()
}

/// Why a batch did not commit.
enum Failure {
    /// Nothing was committed; each operation may run again.
    Before(LedgerError),
    /// COMMIT itself failed: the batch may or may not be applied. With what it decided and
    /// wrote, when its writes all went out.
    Commit(LedgerError, Option<Box<Unanswered>>),
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        Self::Before(e)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Before(e.into())
    }
}

type Key<'a> = (&'a str, &'a str, i64);

/// A reservation being closed, as locked and as the batch has changed it so far.
struct Held {
    state: ReservationState,
    subject: String,
    chatflow: String,
    lines: Vec<HeldLine>,
}

/// The answers of one batch: reserves in queue order, then closes in queue order.
type Answers = (Vec<ReserveOutcome>, Vec<Result<Resolution, LedgerError>>);

async fn run(
    conn: &mut Conn,
    requests: &[&ReserveRequest],
    closing: &[&Closing],
) -> Result<Answers, Failure> {
    let charges: Vec<Vec<Charge<'_>>> = requests
        .iter()
        .map(|r| charges_of(r))
        .collect::<Result<_, _>>()?;
    let Conn { client, st, open } = conn;
    let tx: &Client = client;
    // BEGIN by hand, to send it in the same round trip as the first lock. Until the batch is
    // known to be committed or rolled back, `open` has the pool roll it back before reuse.
    *open = true;
    // READ COMMITTED whatever the role's default, as `pool::begin`.
    let begin = || async {
        Ok::<(), LedgerError>(
            tx.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await?,
        )
    };
    let charged = || charges.iter().flatten().map(Charge::key);

    let mut held = HashMap::new();
    let mut closed = Vec::with_capacity(closing.len());
    let mut transitions = Vec::new();
    let (locked, created) = if closing.is_empty() {
        futures::try_join!(begin(), lock_buckets(tx, st, charged().collect()))?.1
    } else {
        held = futures::try_join!(begin(), lock_reservations(tx, st, closing))?.1;
        for c in closing {
            closed.push(close(&mut held, c, &mut transitions));
        }
        // Every bucket a settle or refund holds a line in, changed or not: an unchanged one's
        // `used` is still its answer, for the alerts on what the hold already counted.
        let closed_lines = transitions.iter().flat_map(|(id, ..)| &held[id].lines);
        let keys = charged()
            .chain(closed_lines.map(|l| (l.policy.as_str(), l.bucket.as_str(), l.window_start)))
            .collect();
        lock_buckets(tx, st, keys).await?
    };
    let mut used = locked.clone();
    // In the order the closes were decided, each leaving its buckets' `used` for the next.
    let mut left: HashMap<ReservationId, Vec<Option<i64>>> = HashMap::new();
    for (id, t, _) in &transitions {
        let after = held[id]
            .lines
            .iter()
            .zip(&t.bucket_delta)
            .map(|(line, &delta)| {
                let key = (
                    line.policy.as_str(),
                    line.bucket.as_str(),
                    line.window_start,
                );
                let u = used.get_mut(&key)?;
                // Settles past 2^63 in all leave the bucket full, never wrapped round to empty.
                *u = u.saturating_add(delta);
                Some(*u)
            })
            .collect();
        left.insert(*id, after);
    }
    for (c, resolution) in closing.iter().zip(closed.iter_mut()) {
        if let Ok(resolution) = resolution
            && resolution.applied
            && let Some(after) = left.remove(&c.id)
        {
            resolution.used = after;
        }
    }
    // Polled in this order, the closes' writes go out before the first reserves (a refund
    // frees its idempotency key for a reserve behind it) in the same round trip.
    let ((), reserved) = futures::try_join!(
        write_closes(tx, st, &held, &transitions),
        reserve(tx, st, requests, &charges, &mut used),
    )?;

    // The own limit each bucket keeps: its last reserve's, where a reserve of the batch charged
    // it (a budget override's limit, or none).
    let mut own_limits: HashMap<Key<'_>, Option<i64>> = HashMap::new();
    for (outcome, charges) in reserved.iter().zip(&charges) {
        if let ReserveOutcome::Reserved { .. } = outcome {
            for charge in charges {
                own_limits.insert(charge.key(), charge.own_limit);
            }
        }
    }
    // A bucket a reserve charged is written even when its `used` came out the same (a cost of
    // 0, or a refund of as much in the batch): its own limit is the reserve's.
    let changed: Vec<(Key<'_>, i64, Option<Option<i64>>)> = used
        .iter()
        .filter(|(key, u)| locked.get(*key) != Some(*u) || own_limits.contains_key(*key))
        .map(|(key, u)| (*key, *u, own_limits.get(key).copied()))
        .collect();
    // Buckets this batch created for reserves it refused.
    let unused: Vec<Key<'_>> = created
        .into_iter()
        .filter(|key| !changed.iter().any(|(k, ..)| k == key))
        .collect();
    // The last write and COMMIT in one round trip.
    let (updated, committed) = futures::join!(
        set_used(tx, st, &changed, &unused),
        tx.batch_execute("COMMIT")
    );
    match (updated, committed) {
        // The last write refused by the client (never sent): had COMMIT gone through, it went
        // without it, and the batch's marker would say applied.
        (Err(u), Err(e)) if u.as_db_error().is_none() && !u.is_closed() => {
            Err(Failure::Commit(e.into(), None))
        }
        (_, Err(e)) => Err(Failure::Commit(
            e.into(),
            Some(Box::new(Unanswered::new(
                (reserved, closed),
                closing,
                transitions
                    .iter()
                    .map(|(id, t, now)| (id.0, t.state.as_str(), now.as_microsecond())),
                changed.iter().map(|(key, ..)| *key),
            ))),
        )),
        // The statement failed in PostgreSQL, which aborted the transaction: COMMIT rolled it
        // back.
        (Err(e), Ok(())) if e.as_db_error().is_some() => {
            *open = false;
            Err(Failure::Before(e.into()))
        }
        // Never sent, yet COMMIT went through without it.
        (Err(e), Ok(())) => Err(Failure::Commit(e.into(), None)),
        (Ok(n), Ok(())) if n != changed.len() as u64 => Err(Failure::Commit(
            LedgerError::Corrupt(format!("updated {n} of {} buckets", changed.len())),
            None,
        )),
        (Ok(_), Ok(())) => {
            *open = false;
            Ok((reserved, closed))
        }
    }
}

/// Locks the reservations the batch closes, in id order, and reads their lines.
async fn lock_reservations(
    tx: &Client,
    st: &Statements,
    closing: &[&Closing],
) -> Result<HashMap<ReservationId, Held>, LedgerError> {
    if closing.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<i64> = closing
        .iter()
        .map(|c| c.id.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (reservations, lines) = futures::try_join!(
        tx.query(&st.lock_reservations, &params),
        tx.query(&st.lines_of_many, &params),
    )?;
    let mut held = HashMap::with_capacity(reservations.len());
    for row in reservations {
        held.insert(
            ReservationId(row.try_get(0)?),
            Held {
                state: ReservationState::parse(row.try_get(1)?)?,
                subject: row.try_get(2)?,
                chatflow: row.try_get(3)?,
                lines: Vec::new(),
            },
        );
    }
    for row in lines {
        if let Some(h) = held.get_mut(&ReservationId(row.try_get(0)?)) {
            h.lines.push(HeldLine {
                idx: row.try_get(1)?,
                policy: row.try_get(2)?,
                bucket: row.try_get(3)?,
                window_start: row.try_get(4)?,
                amount: row.try_get(5)?,
            });
        }
    }
    Ok(held)
}

/// Decides one settle or refund against what the batch has done so far, and records it.
fn close(
    held: &mut HashMap<ReservationId, Held>,
    c: &Closing,
    transitions: &mut Vec<(ReservationId, Transition, Timestamp)>,
) -> Result<Resolution, LedgerError> {
    let h = held
        .get_mut(&c.id)
        .ok_or(LedgerError::UnknownReservation(c.id))?;
    let amounts: Vec<i64> = h.lines.iter().map(|line| line.amount).collect();
    let Some(t) = state::close(c.id, h.state, &amounts, &c.how)? else {
        return Ok(Resolution {
            state: h.state,
            applied: false,
            used: Vec::new(),
        });
    };
    h.state = t.state;
    for (line, &amount) in h.lines.iter_mut().zip(&t.held) {
        line.amount = amount;
    }
    // `used` is known once the buckets are locked (`run`).
    let resolution = Resolution {
        state: t.state,
        applied: true,
        used: Vec::new(),
    };
    transitions.push((c.id, t, c.now));
    Ok(resolution)
}

/// Locks (creating at 0) every bucket in `keys`, in key order; returns their `used`.
async fn lock_buckets<'a>(
    tx: &Client,
    st: &Statements,
    keys: BTreeSet<Key<'a>>,
) -> Result<(HashMap<Key<'a>, i64>, Vec<Key<'a>>), LedgerError> {
    if keys.is_empty() {
        return Ok((HashMap::new(), Vec::new()));
    }
    let policies: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let buckets: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let starts: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows = tx
        .query(&st.lock_buckets, &[&policies, &buckets, &starts])
        .await?;
    if rows.len() != keys.len() {
        return Err(LedgerError::Corrupt(format!(
            "locked {} of {} buckets",
            rows.len(),
            keys.len()
        )));
    }
    let mut used = HashMap::with_capacity(keys.len());
    let mut created = Vec::new();
    for (key, row) in keys.into_iter().zip(rows) {
        let locked: (&str, &str, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if locked != key {
            return Err(LedgerError::Corrupt(format!(
                "bucket {locked:?} locked where {key:?} was expected"
            )));
        }
        used.insert(key, row.try_get::<_, i64>(3)?);
        if row.try_get::<_, bool>(4)? {
            created.push(key);
        }
    }
    Ok((used, created))
}
