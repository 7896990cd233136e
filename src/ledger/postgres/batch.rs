//! Group commit of reservations: a writer task takes every reservation queued while it was busy
//! and charges them in ONE transaction. Two writers per ledger (per replica) take turns, so one
//! batch gathers and runs while the other waits for its COMMIT.
//!
//! Exactness without a savepoint per request: the transaction first locks every bucket the
//! batch touches, creating missing ones, in key order with one upsert (the same order every
//! replica and every settle uses, so batches cannot deadlock each other), and reads their
//! `used`. With the rows locked, whether a request fits is decided in memory, in queue order,
//! exactly as the database would; only requests that fit are written, each with one statement
//! that inserts the reservation and charges its buckets, all pipelined in one round trip.
//!
//! The one thing memory cannot know is whether an idempotency key is already taken. A request
//! with a key therefore ends a pipelined segment: its answer is read before anything after it is
//! decided, and if the key was taken nothing was charged (the statement charges only when it
//! inserted the reservation) and its planned charge is taken back.
//!
//! Any error before the commit rolls the whole batch back and reruns each request alone through
//! the one-request path ([`super::Conn::reserve`]), so one bad request (a string PostgreSQL
//! refuses, say) fails alone. A failed COMMIT fails the batch: whether it was applied is
//! unknowable, and rerunning it could charge twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::pool::{Conn, Pool};
use super::{Charge, LedgerError, ReservationId, ReserveOutcome, ReserveRequest, exhausted};
use crate::ledger::{ReservationState, expiry};

/// Most reservations in one transaction.
const MAX_BATCH: usize = 256;
/// Reservations waiting for a writer before callers wait to queue.
const QUEUE: usize = 4096;
/// Writers per ledger: while one batch waits for its COMMIT, the next one gathers and runs up
/// to the first bucket the committing batch still holds.
const WRITERS: usize = 2;

type Reply = oneshot::Sender<Result<ReserveOutcome, LedgerError>>;

/// A reservation waiting for the writer.
pub(super) struct Pending {
    pub(super) request: ReserveRequest,
    pub(super) reply: Reply,
}

/// Starts the writers; they end when the returned sender (the ledger) is dropped.
pub(super) fn spawn(pool: Arc<Pool>) -> mpsc::Sender<Pending> {
    let (queue, waiting) = mpsc::channel(QUEUE);
    let waiting = Arc::new(Mutex::new(waiting));
    for _ in 0..WRITERS {
        tokio::spawn(write(Arc::clone(&pool), Arc::clone(&waiting)));
    }
    queue
}

/// Takes what queued while it was busy, commits it, and again.
async fn write(pool: Arc<Pool>, waiting: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = waiting.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if taken == 0 {
            return;
        }
        commit(&pool, std::mem::take(&mut batch)).await;
    }
}

/// Reserves every pending request and answers each caller once its reservation is durable.
async fn commit(pool: &Pool, batch: Vec<Pending>) {
    // Requests whose lines cannot be stored are answered at once and stay out of the batch.
    let mut ready = Vec::with_capacity(batch.len());
    for pending in batch {
        match charges_of(&pending.request) {
            Ok(_) => ready.push(pending),
            Err(e) => {
                let _ = pending.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let requests: Vec<&ReserveRequest> = ready.iter().map(|p| &p.request).collect();
    let outcomes = match pool.get().await {
        Ok(mut pooled) => match reserve_all(&mut pooled, &requests).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(Failure::Commit(e)) => all_failed(&e, requests.len()),
            Err(Failure::Before(error)) => {
                tracing::debug!(%error, n = requests.len(), "reservation batch rolled back; reserving one by one");
                drop(pooled);
                let mut outcomes = Vec::with_capacity(requests.len());
                for request in &requests {
                    outcomes.push(super::reserve_alone(pool, request).await);
                }
                outcomes
            }
        },
        Err(e) => all_failed(&e, requests.len()),
    };
    for (pending, outcome) in ready.into_iter().zip(outcomes) {
        // A caller that went away still has its reservation (see the trait documentation).
        let _ = pending.reply.send(outcome);
    }
}

/// The same failure for each of `n` requests.
fn all_failed(e: &LedgerError, n: usize) -> Vec<Result<ReserveOutcome, LedgerError>> {
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
    /// Nothing was committed; each request may run again.
    Before(LedgerError),
    /// COMMIT itself failed: the batch may or may not be applied.
    Commit(LedgerError),
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

/// What memory decided for one request.
enum Plan {
    /// Fits: the bucket `used` after each line, in request order.
    Fits(Vec<i64>),
    Refused(ReserveOutcome),
}

async fn reserve_all(
    conn: &mut Conn,
    requests: &[&ReserveRequest],
) -> Result<Vec<ReserveOutcome>, Failure> {
    let charges: Vec<Vec<Charge<'_>>> = requests
        .iter()
        .map(|r| charges_of(r))
        .collect::<Result<_, _>>()?;
    let Conn { client, st } = conn;
    let tx = client.transaction().await?;
    let mut used = lock_buckets(&tx, st, &charges).await?;

    let mut outcomes: Vec<Option<ReserveOutcome>> = vec![None; requests.len()];
    let mut next = 0;
    while next < requests.len() {
        // Decide in memory up to and including the next request with an idempotency key.
        let mut segment = Vec::new();
        while next < requests.len() {
            let i = next;
            next += 1;
            match plan(requests[i], &charges[i], &used) {
                Plan::Refused(outcome) => outcomes[i] = Some(outcome),
                Plan::Fits(after) => {
                    for (charge, &u) in charges[i].iter().zip(&after) {
                        used.insert(charge.key(), u);
                    }
                    segment.push((i, after));
                    if requests[i].idempotency_key.is_some() {
                        break;
                    }
                }
            }
        }
        let inserted = write_segment(&tx, st, requests, &charges, &segment).await?;
        for ((i, after), id) in segment.into_iter().zip(inserted) {
            let request = requests[i];
            outcomes[i] = Some(match (id, &request.idempotency_key) {
                (Some(id), _) => ReserveOutcome::Reserved {
                    id: ReservationId(id),
                    remaining: charges[i]
                        .iter()
                        .zip(after)
                        .map(|(charge, used)| (charge.policy.to_string(), charge.remaining(used)))
                        .collect(),
                },
                (None, Some(key)) => {
                    // Nothing was charged: take the plan back (it was the segment's last).
                    for charge in &charges[i] {
                        if let Some(u) = used.get_mut(&charge.key()) {
                            *u -= charge.amount;
                        }
                    }
                    let row = tx
                        .query_opt(&st.find_key, &[&request.subject, key])
                        .await?
                        // The key's holder was refunded in between: let the one-request path
                        // retry it.
                        .ok_or_else(|| LedgerError::Corrupt("idempotency key race".into()))?;
                    ReserveOutcome::Duplicate {
                        id: ReservationId(row.try_get(0)?),
                        state: ReservationState::parse(row.try_get(1)?)?,
                    }
                }
                (None, None) => {
                    return Err(LedgerError::Corrupt("reservation not inserted".into()).into());
                }
            });
        }
    }
    tx.commit().await.map_err(|e| Failure::Commit(e.into()))?;
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| Failure::Commit(LedgerError::Corrupt("unplanned".into()))))
        .collect()
}

/// Locks (creating at 0) every bucket the batch charges, in key order; returns their `used`.
async fn lock_buckets<'a>(
    tx: &Transaction<'_>,
    st: &super::schema::Statements,
    charges: &[Vec<Charge<'a>>],
) -> Result<HashMap<Key<'a>, i64>, LedgerError> {
    let keys: BTreeSet<Key<'a>> = charges.iter().flatten().map(Charge::key).collect();
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
    for (key, row) in keys.into_iter().zip(rows) {
        let locked: (&str, &str, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if locked != key {
            return Err(LedgerError::Corrupt(format!(
                "bucket {locked:?} locked where {key:?} was expected"
            )));
        }
        used.insert(key, row.try_get::<_, i64>(3)?);
    }
    Ok(used)
}

/// Whether `charges` fit buckets holding `used`, line by line in request order, exactly as
/// the one-request path decides it.
fn plan(request: &ReserveRequest, charges: &[Charge<'_>], used: &HashMap<Key<'_>, i64>) -> Plan {
    let mut planned: HashMap<Key<'_>, i64> = HashMap::new();
    let mut after = Vec::with_capacity(charges.len());
    for (i, charge) in charges.iter().enumerate() {
        let now = planned
            .get(&charge.key())
            .or_else(|| used.get(&charge.key()))
            .copied()
            .unwrap_or(0);
        if !charge.fits(now) {
            return Plan::Refused(exhausted(request, charges, i, now));
        }
        planned.insert(charge.key(), now + charge.amount);
        after.push(now + charge.amount);
    }
    Plan::Fits(after)
}

/// Owned parameters of one reservation statement.
struct Params<'a> {
    subject: &'a str,
    chatflow: &'a str,
    key: Option<&'a str>,
    now: i64,
    expires: i64,
    idx: Vec<i32>,
    policies: Vec<&'a str>,
    buckets: Vec<&'a str>,
    starts: Vec<i64>,
    amounts: Vec<i64>,
    distinct: i64,
}

/// Inserts and charges the segment's reservations in one pipelined round trip; the id of each,
/// or `None` where its idempotency key was taken (and nothing was charged).
async fn write_segment(
    tx: &Transaction<'_>,
    st: &super::schema::Statements,
    requests: &[&ReserveRequest],
    charges: &[Vec<Charge<'_>>],
    segment: &[(usize, Vec<i64>)],
) -> Result<Vec<Option<i64>>, LedgerError> {
    let params: Vec<Params<'_>> = segment
        .iter()
        .map(|&(i, _)| {
            let request = requests[i];
            let lines = &charges[i];
            Params {
                subject: &request.subject,
                chatflow: &request.chatflow,
                key: request.idempotency_key.as_deref(),
                now: request.now.as_microsecond(),
                expires: expiry(request.now, request.ttl),
                idx: (0..).take(lines.len()).collect(),
                policies: lines.iter().map(|c| c.policy).collect(),
                buckets: lines.iter().map(|c| c.bucket).collect(),
                starts: lines.iter().map(|c| c.window_start).collect(),
                amounts: lines.iter().map(|c| c.amount).collect(),
                distinct: i64::try_from(
                    lines.iter().map(Charge::key).collect::<BTreeSet<_>>().len(),
                )
                .unwrap_or(i64::MAX),
            }
        })
        .collect();
    let refs: Vec<[&(dyn ToSql + Sync); 10]> = params
        .iter()
        .map(|p| -> [&(dyn ToSql + Sync); 10] {
            [
                &p.subject,
                &p.chatflow,
                &p.key,
                &p.now,
                &p.expires,
                &p.idx,
                &p.policies,
                &p.buckets,
                &p.starts,
                &p.amounts,
            ]
        })
        .collect();
    // Polled together, the statements go out back to back and run in this order.
    let rows = futures::future::join_all(
        refs.iter()
            .map(|params| tx.query_opt(&st.reserve_locked, params.as_slice())),
    )
    .await;
    let mut ids = Vec::with_capacity(rows.len());
    for (row, p) in rows.into_iter().zip(&params) {
        ids.push(match row? {
            Some(row) => {
                let charged: i64 = row.try_get(1)?;
                if charged != p.distinct {
                    return Err(LedgerError::Corrupt(format!(
                        "charged {charged} of {} buckets",
                        p.distinct
                    )));
                }
                Some(row.try_get(0)?)
            }
            None => None,
        });
    }
    Ok(ids)
}
