//! An admin's adjustment on PostgreSQL ([`crate::ledger::CreditLedger::adjust`]), in its own
//! transaction outside the batches.

use super::alone::{Attempt, Committed, commit};
use super::pool::Conn;
use crate::ledger::{AdjustOutcome, AdjustRequest, LedgerError, ReservationId, ReservationState};

impl Conn {
    /// An admin's adjustment in its own transaction: rare, so its statements are prepared
    /// when used. It locks the one bucket row it changes; a batch waits for it like for another
    /// replica's batch.
    pub(super) async fn adjust(
        &mut self,
        request: &AdjustRequest,
    ) -> Result<Attempt<AdjustOutcome>, LedgerError> {
        let delta = request.delta()?;
        let now = request.now.as_microsecond();
        let start = request.window.start.as_microsecond();
        let state = ReservationState::Adjusted.as_str();
        let tx = super::pool::begin(&mut self.client).await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO reservations (subject, chatflow, idempotency_key, state,
                                           created_us, expires_us, updated_us)
                 VALUES ($1::text, '', $2::text, $3::text, $4::int8, $4::int8, $4::int8)
                 ON CONFLICT (subject, idempotency_key)
                     WHERE idempotency_key IS NOT NULL AND state <> 'refunded'
                 DO NOTHING
                 RETURNING id",
                &[&request.key_scope(), &request.idempotency_key, &state, &now],
            )
            .await?;
        let id: i64 = match (inserted, &request.idempotency_key) {
            (Some(row), _) => row.try_get(0)?,
            (None, Some(key)) => {
                let existing = tx
                    .query_opt(&self.st.find_key, &[&request.key_scope(), key])
                    .await?;
                tx.rollback().await?;
                let row = existing.ok_or_else(|| {
                    LedgerError::Corrupt("idempotency key taken by nothing".into())
                })?;
                return Ok(Attempt::Done(AdjustOutcome::Duplicate {
                    id: ReservationId(row.try_get(0)?),
                    state: ReservationState::parse(row.try_get(1)?)?,
                }));
            }
            (None, None) => return Err(LedgerError::Corrupt("adjustment not inserted".into())),
        };
        tx.execute(
            "INSERT INTO reservation_lines (reservation_id, idx, policy, bucket, window_start, amount)
             VALUES ($1::int8, 0, $2::text, $3::text, $4::int8, $5::int8)",
            &[&id, &request.policy, &request.bucket, &start, &delta],
        )
        .await?;
        tx.execute(
            "INSERT INTO adjustments (reservation_id, actor, reason)
             VALUES ($1::int8, $2::text, $3::text)",
            &[&id, &request.actor, &request.reason],
        )
        .await?;
        tx.execute(
            "INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy, credits, tokens,
                                outcome)
             VALUES ($1::int8, $2::int8, $3::text, '', $4::text, $5::int8, 0, $6::text)",
            &[&now, &id, &request.bucket, &request.policy, &delta, &state],
        )
        .await?;
        // The contended row last, to hold its lock only until the commit.
        let used: i64 = tx
            .query_one(
                "INSERT INTO buckets (policy, bucket, window_start, used, own_limit)
                 VALUES ($1::text, $2::text, $3::int8, $4::int8, $5::int8)
                 ON CONFLICT (policy, bucket, window_start)
                 DO UPDATE SET used = CASE
                     WHEN excluded.used > 0 AND buckets.used > 9223372036854775807 - excluded.used
                     THEN 9223372036854775807 ELSE buckets.used + excluded.used END
                 RETURNING used",
                &[
                    &request.policy,
                    &request.bucket,
                    &start,
                    &delta,
                    &request.own_limit,
                ],
            )
            .await?
            .try_get(0)?;
        let outcome = AdjustOutcome::Adjusted {
            id: ReservationId(id),
            used,
        };
        Ok(match commit(tx).await? {
            Committed::Yes => Attempt::Done(outcome),
            Committed::Unknown(error) => Attempt::Unanswered {
                error,
                id,
                buckets: vec![(request.policy.clone(), request.bucket.clone(), start)],
                outcome,
            },
        })
    }
}
