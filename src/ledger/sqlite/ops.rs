//! What each operation does inside the writer's transaction. The single writer makes every
//! check-then-write here exact.

use std::collections::HashMap;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use crate::ledger::state::{self, Close, HeldLine};
use crate::ledger::{
    AdjustOutcome, AdjustRequest, Charge, LedgerError, PrunedChunk, ReservationId,
    ReservationState, ReserveOutcome, ReserveRequest, Resolution, expiry,
};

// The statements of a reserve and a settle, each compiled once per connection (rusqlite's
// statement cache). SQLite may still re-prepare a cached statement at each call when its plan
// could depend on a bound value; a test checks that none of these is.
const FIND_KEY: &str = "
    SELECT id, state FROM reservations
    WHERE subject = ?1 AND idempotency_key = ?2 AND state <> 'refunded'";
const BUCKET_USED: &str =
    "SELECT used FROM buckets WHERE policy = ?1 AND bucket = ?2 AND window_start = ?3";
const INSERT_RESERVATION: &str = "
    INSERT INTO reservations
        (subject, chatflow, idempotency_key, state, created_us, expires_us, updated_us)
    VALUES (?1, ?2, ?3, ?6, ?4, ?5, ?4)";
const CHARGE_BUCKET: &str = "
    INSERT INTO buckets (policy, bucket, window_start, used, own_limit) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (policy, bucket, window_start)
    DO UPDATE SET used = used + excluded.used, own_limit = excluded.own_limit";
const HOLD_LINE: &str = "
    INSERT INTO reservation_lines (reservation_id, idx, policy, bucket, window_start, amount)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const RESERVATION: &str = "SELECT state, subject, chatflow FROM reservations WHERE id = ?1";
/// No `ORDER BY idx` (the caller sorts): with it, SQLite re-prepared this statement at every
/// call, most of the SQL parsing left on the writer in a profile.
const HELD_LINES: &str = "
    SELECT idx, policy, bucket, window_start, amount FROM reservation_lines
    WHERE reservation_id = ?1";
/// `used` saturates at 2^63 - 1: past it SQLite would make the sum a REAL, which no later read
/// of the bucket (an integer) accepts.
const ADJUST_BUCKET: &str = "
    UPDATE buckets SET used = CASE WHEN ?4 > 0 AND used > 9223372036854775807 - ?4
        THEN 9223372036854775807 ELSE used + ?4 END
    WHERE policy = ?1 AND bucket = ?2 AND window_start = ?3
    RETURNING used";
const REHOLD_LINE: &str =
    "UPDATE reservation_lines SET amount = ?3 WHERE reservation_id = ?1 AND idx = ?2";
const LOG_USAGE: &str = "
    INSERT INTO usage
        (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const CLOSE_RESERVATION: &str =
    "UPDATE reservations SET state = ?2, tokens = ?3, updated_us = ?4 WHERE id = ?1";

/// Every statement above, for the test that none is compiled twice.
#[cfg(test)]
pub(super) const HOT: [&str; 11] = [
    FIND_KEY,
    BUCKET_USED,
    INSERT_RESERVATION,
    CHARGE_BUCKET,
    HOLD_LINE,
    RESERVATION,
    HELD_LINES,
    ADJUST_BUCKET,
    REHOLD_LINE,
    LOG_USAGE,
    CLOSE_RESERVATION,
];

pub(super) fn reserve(
    conn: &Connection,
    request: &ReserveRequest,
) -> Result<ReserveOutcome, LedgerError> {
    if let Some(key) = &request.idempotency_key {
        let existing = conn
            .prepare_cached(FIND_KEY)?
            .query_row(params![request.subject, key], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        if let Some((id, state)) = existing {
            return Ok(ReserveOutcome::Duplicate {
                id: ReservationId(id),
                state: ReservationState::parse(&state)?,
            });
        }
    }

    // Check every line before writing any: the single writer makes check-then-write exact.
    let charges = request
        .lines
        .iter()
        .map(Charge::of)
        .collect::<Result<Vec<_>, _>>()?;
    let mut used_after = Vec::with_capacity(charges.len());
    let mut planned: HashMap<(&str, &str, i64), i64> = HashMap::new();
    let mut used_of = conn.prepare_cached(BUCKET_USED)?;
    for (charge, line) in charges.iter().zip(&request.lines) {
        let used = match planned.get(&charge.key()) {
            Some(&used) => used,
            None => used_of
                .query_row(
                    params![charge.policy, charge.bucket, charge.window_start],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0),
        };
        if !charge.fits(used) {
            return Ok(ReserveOutcome::Exhausted {
                policy: line.policy.clone(),
                remaining: charge.remaining(used),
                reset_at: line.window.end,
            });
        }
        planned.insert(charge.key(), used + charge.amount);
        used_after.push(used + charge.amount);
    }

    let now = request.now.as_microsecond();
    let state = request.initial_state();
    conn.prepare_cached(INSERT_RESERVATION)?.execute(params![
        request.subject,
        request.chatflow,
        request.idempotency_key,
        now,
        expiry(request.now, request.ttl),
        state.as_str(),
    ])?;
    let id = conn.last_insert_rowid();
    let mut charge_bucket = conn.prepare_cached(CHARGE_BUCKET)?;
    let mut hold = conn.prepare_cached(HOLD_LINE)?;
    let mut log = conn.prepare_cached(LOG_USAGE)?;
    for (idx, charge) in (0_i32..).zip(&charges) {
        charge_bucket.execute(params![
            charge.policy,
            charge.bucket,
            charge.window_start,
            charge.amount,
            charge.own_limit
        ])?;
        hold.execute(params![
            id,
            idx,
            charge.policy,
            charge.bucket,
            charge.window_start,
            charge.amount
        ])?;
        if request.final_cost {
            log.execute(params![
                now,
                id,
                request.subject,
                request.chatflow,
                charge.policy,
                charge.amount,
                0,
                state.as_str()
            ])?;
        }
    }
    Ok(super::super::reserved(id, &charges, used_after))
}

pub(super) fn close(
    conn: &Connection,
    id: ReservationId,
    how: &Close,
    now: Timestamp,
) -> Result<Resolution, LedgerError> {
    let (state, subject, chatflow) = conn
        .prepare_cached(RESERVATION)?
        .query_row([id.0], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()?
        .ok_or(LedgerError::UnknownReservation(id))?;
    let state = ReservationState::parse(&state)?;
    let mut lines = conn
        .prepare_cached(HELD_LINES)?
        .query_map([id.0], |row| {
            Ok(HeldLine {
                idx: row.get(0)?,
                policy: row.get(1)?,
                bucket: row.get(2)?,
                window_start: row.get(3)?,
                amount: row.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    lines.sort_unstable_by_key(|line| line.idx);
    let held: Vec<i64> = lines.iter().map(|line| line.amount).collect();
    let Some(change) = state::close(id, state, &held, how)? else {
        return Ok(Resolution {
            state,
            applied: false,
            used: Vec::new(),
        });
    };

    let now = now.as_microsecond();
    let mut used = vec![None; lines.len()];
    let mut adjust = conn.prepare_cached(ADJUST_BUCKET)?;
    let mut rehold = conn.prepare_cached(REHOLD_LINE)?;
    let mut log = conn.prepare_cached(LOG_USAGE)?;
    let mut used_of = conn.prepare_cached(BUCKET_USED)?;
    for (i, line) in lines.iter().enumerate() {
        // An unchanged bucket's `used` is an answer too: the alerts check what the hold
        // already counted against it.
        used[i] = if change.bucket_delta[i] != 0 {
            adjust
                .query_row(
                    params![
                        line.policy,
                        line.bucket,
                        line.window_start,
                        change.bucket_delta[i]
                    ],
                    |row| row.get(0),
                )
                .optional()?
        } else {
            used_of
                .query_row(
                    params![line.policy, line.bucket, line.window_start],
                    |row| row.get(0),
                )
                .optional()?
        };
        rehold.execute(params![id.0, line.idx, change.held[i]])?;
        log.execute(params![
            now,
            id.0,
            subject,
            chatflow,
            line.policy,
            change.logged[i],
            change.tokens,
            change.state.as_str()
        ])?;
    }
    conn.prepare_cached(CLOSE_RESERVATION)?.execute(params![
        id.0,
        change.state.as_str(),
        change.tokens,
        now
    ])?;
    Ok(Resolution {
        state: change.state,
        applied: true,
        used,
    })
}

/// An adjustment's change to its bucket (`?4`: added to `used`), with the bucket's `used` after.
/// A bucket's own limit is left as its last reserve wrote it; a new one gets `?5`.
const ADJUST: &str = "
    INSERT INTO buckets (policy, bucket, window_start, used, own_limit) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (policy, bucket, window_start) DO UPDATE SET used =
        CASE WHEN excluded.used > 0 AND used > 9223372036854775807 - excluded.used
        THEN 9223372036854775807 ELSE used + excluded.used END
    RETURNING used";

/// An admin's adjustment: a final `Adjusted` reservation with one line, its bucket changed by
/// `-credits`, and its usage row. Rare: its statements are not kept hot.
pub(super) fn adjust(
    conn: &Connection,
    request: &AdjustRequest,
) -> Result<AdjustOutcome, LedgerError> {
    if let Some(key) = &request.idempotency_key {
        let existing = conn
            .prepare_cached(FIND_KEY)?
            .query_row(params![request.key_scope(), key], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        if let Some((id, state)) = existing {
            return Ok(AdjustOutcome::Duplicate {
                id: ReservationId(id),
                state: ReservationState::parse(&state)?,
            });
        }
    }
    let delta = request.delta()?;
    let now = request.now.as_microsecond();
    let start = request.window.start.as_microsecond();
    let state = ReservationState::Adjusted;
    conn.prepare_cached(INSERT_RESERVATION)?.execute(params![
        request.key_scope(),
        "",
        request.idempotency_key,
        now,
        now,
        state.as_str(),
    ])?;
    let id = conn.last_insert_rowid();
    conn.prepare_cached(HOLD_LINE)?.execute(params![
        id,
        0,
        request.policy,
        request.bucket,
        start,
        delta
    ])?;
    let used: i64 = conn.prepare_cached(ADJUST)?.query_row(
        params![
            request.policy,
            request.bucket,
            start,
            delta,
            request.own_limit
        ],
        |row| row.get(0),
    )?;
    conn.prepare_cached(LOG_USAGE)?.execute(params![
        now,
        id,
        request.bucket,
        "",
        request.policy,
        delta,
        0,
        state.as_str()
    ])?;
    // Rare: prepared when used.
    conn.execute(
        "INSERT INTO adjustments (reservation_id, actor, reason) VALUES (?1, ?2, ?3)",
        params![id, request.actor, request.reason],
    )?;
    Ok(AdjustOutcome::Adjusted {
        id: ReservationId(id),
        used,
    })
}

/// Usage rows for every open reservation past its expiry (`?1`: now). The expired ids come from
/// the partial index of open reservations: written as a plain join with `ORDER BY r.id`, SQLite
/// walks the whole reservations table in id order instead, every sweep, under the writer.
pub(super) const SWEEP_USAGE: &str = "
    INSERT INTO usage (time_us, reservation_id, subject, chatflow, policy, credits, tokens, outcome)
    SELECT ?1, r.id, r.subject, r.chatflow, l.policy, l.amount, 0, 'expired'
    FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id
    WHERE r.id IN (SELECT id FROM reservations WHERE state = 'reserved' AND expires_us <= ?1)
    ORDER BY r.id, l.idx";

/// Marks the reservations [`SWEEP_USAGE`] charged as expired.
pub(super) const SWEEP_STATE: &str = "
    UPDATE reservations SET state = 'expired', updated_us = ?1
    WHERE state = 'reserved' AND expires_us <= ?1";

/// Expires abandoned reservations: they keep their charge, the usage log records it.
pub(super) fn sweep(conn: &Connection, now: Timestamp) -> Result<u64, LedgerError> {
    let now = now.as_microsecond();
    conn.prepare_cached(SWEEP_USAGE)?.execute([now])?;
    let expired = conn.prepare_cached(SWEEP_STATE)?.execute([now])?;
    Ok(expired as u64)
}

/// The chunk a prune looks at (`?1`: after this id, `?2`: chunk size): its size, last id and
/// oldest creation time, read through the primary key.
pub(super) const PRUNE_CHUNK: &str = "
    SELECT count(*), COALESCE(max(id), 0), COALESCE(min(created_us), 0)
    FROM (SELECT id, created_us FROM reservations WHERE id > ?1 ORDER BY id LIMIT ?2)";

/// The lines of the reservations [`PRUNE_RESERVATIONS`] deletes (`?1` < id <= `?2`, `?3`: the
/// cutoff).
pub(super) const PRUNE_LINES: &str = "
    DELETE FROM reservation_lines WHERE reservation_id IN (
        SELECT id FROM reservations
        WHERE id > ?1 AND id <= ?2 AND state <> 'reserved' AND updated_us < ?3)";

/// The who and why of the adjustments [`PRUNE_RESERVATIONS`] deletes.
pub(super) const PRUNE_ADJUSTMENTS: &str = "
    DELETE FROM adjustments WHERE reservation_id IN (
        SELECT id FROM reservations
        WHERE id > ?1 AND id <= ?2 AND state <> 'reserved' AND updated_us < ?3)";

/// Closed reservations of the chunk last changed before the cutoff.
pub(super) const PRUNE_RESERVATIONS: &str = "
    DELETE FROM reservations
    WHERE id > ?1 AND id <= ?2 AND state <> 'reserved' AND updated_us < ?3";

/// The oldest usage rows before the cutoff (`?1`), at most `?2`, through the time index.
pub(super) const PRUNE_USAGE: &str = "
    DELETE FROM usage WHERE id IN (
        SELECT id FROM usage WHERE time_us < ?1 ORDER BY time_us LIMIT ?2)";

/// Buckets of windows that started before `?1` (not `Never`'s, at the epoch), at most `?2`,
/// through `buckets_by_start`.
pub(super) const PRUNE_BUCKETS: &str = "
    DELETE FROM buckets WHERE (policy, bucket, window_start) IN (
        SELECT policy, bucket, window_start FROM buckets
        WHERE window_start > 0 AND window_start < ?1 LIMIT ?2)";

/// Deletes the closed reservations of one chunk; see [`CreditLedger::prune_reservations`].
///
/// [`CreditLedger::prune_reservations`]: crate::ledger::CreditLedger::prune_reservations
pub(super) fn prune_reservations(
    conn: &Connection,
    before: Timestamp,
    after: ReservationId,
    chunk: u32,
) -> Result<PrunedChunk, LedgerError> {
    let before = before.as_microsecond();
    let (seen, last, oldest): (i64, i64, i64) = conn
        .prepare_cached(PRUNE_CHUNK)?
        .query_row(params![after.0, chunk], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    let mut deleted = 0;
    if seen > 0 && oldest < before {
        conn.prepare_cached(PRUNE_LINES)?
            .execute(params![after.0, last, before])?;
        conn.prepare_cached(PRUNE_ADJUSTMENTS)?
            .execute(params![after.0, last, before])?;
        deleted = conn
            .prepare_cached(PRUNE_RESERVATIONS)?
            .execute(params![after.0, last, before])?;
    }
    Ok(PrunedChunk::of(
        deleted as u64,
        u64::try_from(seen).unwrap_or(0),
        chunk,
        last,
        oldest,
        before,
    ))
}

/// Runs one of the chunked deletes, [`PRUNE_USAGE`] or [`PRUNE_BUCKETS`] (`?1`: a time bound,
/// `?2`: the chunk); how many rows it deleted.
pub(super) fn delete_chunk(
    conn: &Connection,
    statement: &str,
    bound: Timestamp,
    chunk: u32,
) -> Result<u64, LedgerError> {
    let deleted = conn
        .prepare_cached(statement)?
        .execute(params![bound.as_microsecond(), chunk])?;
    Ok(deleted as u64)
}
