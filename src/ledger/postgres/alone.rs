//! One operation in its own transaction: the writer's fallback when a batch fails before its
//! commit (each of its operations then runs alone), and an admin's adjustment ([`super::adjust`]).
//! Retried on serialization failures and deadlocks; a COMMIT that goes unanswered is asked
//! about on another connection, as for a batch.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use jiff::Timestamp;

use super::pool::{self, Conn, Pool};
use super::{
    ATTEMPTS, Plan, backoff, batch, exhausted, insert_reservation, lock_order, plan, retryable,
};
use crate::ledger::state::{self, Close, HeldLine};
use crate::ledger::{
    AdjustOutcome, AdjustRequest, Charge, LedgerError, ReservationId, ReservationState,
    ReserveOutcome, ReserveRequest, Resolution,
};

/// One reservation in its own transaction, retried on serialization failures and deadlocks:
/// the writer's fallback when a batch fails before its commit.
pub(super) async fn reserve_alone(
    pool: &Pool,
    request: &ReserveRequest,
) -> Result<ReserveOutcome, LedgerError> {
    let charges = request
        .lines
        .iter()
        .map(Charge::of)
        .collect::<Result<Vec<_>, _>>()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = pool.get().await?;
        match conn.reserve(request, &charges).await {
            Ok(Some(Attempt::Done(outcome))) => return Ok(outcome),
            Ok(Some(Attempt::Unanswered {
                error,
                id,
                buckets,
                outcome,
            })) => {
                // Closed, not pooled: a transaction the server still holds open ends with it.
                conn.open = true;
                drop(conn);
                if was_applied(pool, &error, id, &buckets, "reserve").await? {
                    return Ok(outcome);
                }
                if attempt >= ATTEMPTS {
                    return Err(error);
                }
            }
            // The key's holder was refunded between our insert and our look-up.
            Ok(None) if attempt < ATTEMPTS => {}
            Ok(None) => return Err(LedgerError::Corrupt("idempotency key race".into())),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
}

/// An admin's adjustment, retried like [`reserve_alone`].
pub(super) async fn adjust(
    pool: &Pool,
    request: &AdjustRequest,
) -> Result<AdjustOutcome, LedgerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = pool.get().await?;
        match conn.adjust(request).await {
            Ok(Attempt::Done(outcome)) => return Ok(outcome),
            Ok(Attempt::Unanswered {
                error,
                id,
                buckets,
                outcome,
            }) => {
                // Closed, not pooled: a transaction the server still holds open ends with it.
                conn.open = true;
                drop(conn);
                if was_applied(pool, &error, id, &buckets, "adjust").await? {
                    return Ok(outcome);
                }
                if attempt >= ATTEMPTS {
                    return Err(error);
                }
            }
            Err(e) if attempt < ATTEMPTS && retryable(&e) => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
}

/// One attempt of a write in its own transaction.
pub(super) enum Attempt<T> {
    /// Committed, or decided without a write.
    Done(T),
    /// Its COMMIT went out and no answer came back: `outcome` if it was applied.
    Unanswered {
        error: LedgerError,
        /// The reservation it created.
        id: i64,
        /// The buckets it changed, to wait on for its end.
        buckets: Vec<(String, String, i64)>,
        outcome: T,
    },
}

pub(super) enum Committed {
    Yes,
    /// Sent, and the connection broke before its answer: applied or rolled back, this
    /// connection cannot tell.
    Unknown(LedgerError),
}

/// Commits `tx`. A refusal by the server (a serialization failure at commit) rolled it back and
/// is an error; a COMMIT the server never answered is [`Committed::Unknown`].
pub(super) async fn commit(tx: tokio_postgres::Transaction<'_>) -> Result<Committed, LedgerError> {
    match tx.commit().await {
        Ok(()) => Ok(Committed::Yes),
        Err(e) if e.as_db_error().is_none() => Ok(Committed::Unknown(e.into())),
        Err(e) => Err(e.into()),
    }
}

/// Whether a one-operation write whose COMMIT went unanswered was applied, asked on another
/// connection as for a batch ([`batch::unanswered`]); `error` when that cannot be told. Without
/// the check the caller would be refused while its reservation stayed charged (a flat cost for
/// good), or charged twice by its retry.
async fn was_applied(
    pool: &Pool,
    error: &LedgerError,
    id: i64,
    buckets: &[(String, String, i64)],
    operation: &'static str,
) -> Result<bool, LedgerError> {
    match batch::unanswered::created(pool, id, buckets).await {
        Ok(applied) => {
            tracing::warn!(%error, operation, applied, "a ledger COMMIT went unanswered");
            Ok(applied)
        }
        Err(check) => {
            tracing::error!(%error, %check, operation,
                "a ledger COMMIT went unanswered and whether it was applied cannot be told: \
                 its reservation may stay charged until refunded by hand");
            Err(LedgerError::Commit {
                message: error.to_string(),
                transient: error.transient(),
            })
        }
    }
}

/// One settle or refund in its own transaction, retried like [`reserve_alone`].
pub(super) async fn close_alone(
    pool: &Pool,
    id: ReservationId,
    how: &Close,
    now: Timestamp,
) -> Result<Resolution, LedgerError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut conn = pool.get().await?;
        match conn.close(id, how, now).await {
            Err(e) if attempt < ATTEMPTS && retryable(&e) => backoff(attempt).await,
            result => return result,
        }
    }
}

impl Conn {
    /// One attempt; `None` asks for another.
    async fn reserve(
        &mut self,
        request: &ReserveRequest,
        charges: &[Charge<'_>],
    ) -> Result<Option<Attempt<ReserveOutcome>>, LedgerError> {
        let st = &self.st;
        let tx = pool::begin(&mut self.client).await?;
        let inserted = insert_reservation(&tx, st, request, charges).await?;
        let id: i64 = match (inserted, &request.idempotency_key) {
            (Some(id), _) => id,
            // ON CONFLICT DO NOTHING: the key belongs to a reservation that is not refunded
            // (it waited for that reservation's transaction to commit first).
            (None, Some(key)) => {
                let existing = tx.query_opt(&st.find_key, &[&request.subject, key]).await?;
                tx.rollback().await?;
                return match existing {
                    Some(row) => Ok(Some(Attempt::Done(ReserveOutcome::Duplicate {
                        id: ReservationId(row.try_get(0)?),
                        state: ReservationState::parse(row.try_get(1)?)?,
                    }))),
                    None => Ok(None),
                };
            }
            (None, None) => return Err(LedgerError::Corrupt("reservation not inserted".into())),
        };

        // The bucket rows are the contended ones: charge them last, to hold their locks only
        // until the commit.
        let mut used_after = vec![0; charges.len()];
        for i in lock_order(charges.iter().map(Charge::key)) {
            let charge = &charges[i];
            let statement = if charge.fits(0) {
                &st.charge
            } else {
                &st.charge_existing
            };
            let charged = tx
                .query_opt(
                    statement,
                    &[
                        &charge.policy,
                        &charge.bucket,
                        &charge.window_start,
                        &charge.amount,
                        &charge.limit,
                        &charge.own_limit,
                    ],
                )
                .await?;
            match charged {
                Some(row) => used_after[i] = row.try_get(0)?,
                None => {
                    tx.rollback().await?;
                    let exhausted = self.exhausted(request, charges, i).await?;
                    return Ok(Some(Attempt::Done(exhausted)));
                }
            }
        }
        let outcome = crate::ledger::reserved(id, charges, used_after);
        Ok(Some(match commit(tx).await? {
            Committed::Yes => Attempt::Done(outcome),
            Committed::Unknown(error) => Attempt::Unanswered {
                error,
                id,
                buckets: charges
                    .iter()
                    .map(|c| (c.policy.to_owned(), c.bucket.to_owned(), c.window_start))
                    .collect(),
                outcome,
            },
        }))
    }

    /// After a rollback: names the first line in request order that does not fit now, or the
    /// line that failed if the buckets changed in between.
    async fn exhausted(
        &self,
        request: &ReserveRequest,
        charges: &[Charge<'_>],
        failed: usize,
    ) -> Result<ReserveOutcome, LedgerError> {
        let mut used = HashMap::new();
        for charge in charges {
            if let Entry::Vacant(slot) = used.entry(charge.key()) {
                slot.insert(self.used(charge).await?);
            }
        }
        Ok(match plan(request, charges, &used) {
            Plan::Refused(outcome) => outcome,
            Plan::Fits(after) => {
                let before = after[failed] - charges[failed].amount;
                exhausted(request, charges, failed, before)
            }
        })
    }

    async fn used(&self, charge: &Charge<'_>) -> Result<i64, LedgerError> {
        let row = self
            .client
            .query_opt(
                &self.st.used_of,
                &[&charge.policy, &charge.bucket, &charge.window_start],
            )
            .await?;
        Ok(match row {
            Some(row) => row.try_get(0)?,
            None => 0,
        })
    }

    async fn close(
        &mut self,
        id: ReservationId,
        how: &Close,
        now: Timestamp,
    ) -> Result<Resolution, LedgerError> {
        let st = &self.st;
        let tx = pool::begin(&mut self.client).await?;
        let row = tx
            .query_opt(&st.lock_reservation, &[&id.0])
            .await?
            .ok_or(LedgerError::UnknownReservation(id))?;
        let state = ReservationState::parse(row.try_get(0)?)?;
        let subject: &str = row.try_get(1)?;
        let chatflow: &str = row.try_get(2)?;
        let lines = tx
            .query(&st.lines_of, &[&id.0])
            .await?
            .iter()
            .map(|row| {
                Ok(HeldLine {
                    idx: row.try_get(0)?,
                    policy: row.try_get(1)?,
                    bucket: row.try_get(2)?,
                    window_start: row.try_get(3)?,
                    amount: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let held: Vec<i64> = lines.iter().map(|line| line.amount).collect();
        let Some(change) = state::close(id, state, &held, how)? else {
            tx.rollback().await?;
            return Ok(Resolution {
                state,
                applied: false,
                used: Vec::new(),
            });
        };
        let mut used = vec![None; lines.len()];

        let keys = lines
            .iter()
            .map(|l| (l.policy.as_str(), l.bucket.as_str(), l.window_start));
        for i in lock_order(keys) {
            let line = &lines[i];
            // An unchanged bucket's `used` is an answer too: the alerts check what the hold
            // already counted against it.
            let row = if change.bucket_delta[i] != 0 {
                tx.query_opt(
                    &st.adjust,
                    &[
                        &line.policy,
                        &line.bucket,
                        &line.window_start,
                        &change.bucket_delta[i],
                    ],
                )
                .await?
            } else {
                tx.query_opt(
                    &st.used_of,
                    &[&line.policy, &line.bucket, &line.window_start],
                )
                .await?
            };
            used[i] = row.map(|row| row.try_get(0)).transpose()?;
        }
        let now = now.as_microsecond();
        let idx: Vec<i32> = lines.iter().map(|line| line.idx).collect();
        let policies: Vec<&str> = lines.iter().map(|line| line.policy.as_str()).collect();
        let outcome = change.state.as_str();
        tx.execute(&st.rehold, &[&id.0, &idx, &change.held]).await?;
        tx.execute(
            &st.log,
            &[
                &now,
                &id.0,
                &subject,
                &chatflow,
                &change.tokens,
                &outcome,
                &policies,
                &change.logged,
            ],
        )
        .await?;
        tx.execute(&st.finish, &[&id.0, &outcome, &change.tokens, &now])
            .await?;
        tx.commit().await?;
        Ok(Resolution {
            state: change.state,
            applied: true,
            used,
        })
    }
}
