//! Step 4 of a batch (see `batch.rs`): its writes — every settle and refund in one statement,
//! new reservations (one statement for those without an idempotency key), each changed bucket's
//! final `used` — decided in memory against the rows the batch locked.

use super::*;

/// Writes every applied settle and refund, in one statement.
pub(super) async fn write_closes(
    tx: &Client,
    st: &Statements,
    held: &HashMap<ReservationId, Held>,
    transitions: &[(ReservationId, Transition, Timestamp)],
) -> Result<(), LedgerError> {
    if transitions.is_empty() {
        return Ok(());
    }
    let mut c = Closes::default();
    for (id, t, now) in transitions {
        let h = &held[id];
        let (id, outcome, now) = (id.0, t.state.as_str(), now.as_microsecond());
        c.id.push(id);
        c.state.push(outcome);
        c.tokens.push(t.tokens);
        c.now.push(now);
        for ((line, &amount), &logged) in h.lines.iter().zip(&t.held).zip(&t.logged) {
            c.line_reservation.push(id);
            c.line_idx.push(line.idx);
            c.line_amount.push(amount);
            c.usage_time.push(now);
            c.usage_reservation.push(id);
            c.usage_subject.push(&h.subject);
            c.usage_chatflow.push(&h.chatflow);
            c.usage_policy.push(&line.policy);
            c.usage_credits.push(logged);
            c.usage_tokens.push(t.tokens);
            c.usage_outcome.push(outcome);
        }
    }
    tx.execute(
        &st.close_many,
        &[
            &c.id,
            &c.state,
            &c.tokens,
            &c.now,
            &c.line_reservation,
            &c.line_idx,
            &c.line_amount,
            &c.usage_time,
            &c.usage_reservation,
            &c.usage_subject,
            &c.usage_chatflow,
            &c.usage_policy,
            &c.usage_credits,
            &c.usage_tokens,
            &c.usage_outcome,
        ],
    )
    .await?;
    Ok(())
}

/// A batch's settles and refunds as the columns of `close_many`: per reservation, per line
/// (the amount it now holds), per usage row (one per line).
#[derive(Default)]
struct Closes<'a> {
    id: Vec<i64>,
    state: Vec<&'static str>,
    tokens: Vec<i64>,
    now: Vec<i64>,
    line_reservation: Vec<i64>,
    line_idx: Vec<i32>,
    line_amount: Vec<i64>,
    usage_time: Vec<i64>,
    usage_reservation: Vec<i64>,
    usage_subject: Vec<&'a str>,
    usage_chatflow: Vec<&'a str>,
    usage_policy: Vec<&'a str>,
    usage_credits: Vec<i64>,
    usage_tokens: Vec<i64>,
    usage_outcome: Vec<&'static str>,
}

/// Decides and writes every reserve in queue order; `used` follows what is charged.
pub(super) async fn reserve<'a>(
    tx: &Client,
    st: &Statements,
    requests: &[&ReserveRequest],
    charges: &[Vec<Charge<'a>>],
    used: &mut HashMap<Key<'a>, i64>,
) -> Result<Vec<ReserveOutcome>, LedgerError> {
    let mut outcomes: Vec<Option<ReserveOutcome>> = vec![None; requests.len()];
    let mut next = 0;
    while next < requests.len() {
        // Decide in memory up to and including the next request with an idempotency key.
        let mut segment = Vec::new();
        while next < requests.len() {
            let i = next;
            next += 1;
            match plan(requests[i], &charges[i], used) {
                // A key already held is a duplicate even when the budget is spent (as on
                // SQLite and the one-operation path, which check the key first).
                Plan::Refused(outcome) => {
                    outcomes[i] = Some(match &requests[i].idempotency_key {
                        Some(key) => tx
                            .query_opt(&st.find_key, &[&requests[i].subject, key])
                            .await?
                            .map(|row| -> Result<ReserveOutcome, LedgerError> {
                                Ok(ReserveOutcome::Duplicate {
                                    id: ReservationId(row.try_get(0)?),
                                    state: ReservationState::parse(row.try_get(1)?)?,
                                })
                            })
                            .transpose()?
                            .unwrap_or(outcome),
                        None => outcome,
                    });
                }
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
        let inserted = insert_reservations(tx, st, requests, charges, &segment).await?;
        for ((i, after), id) in segment.into_iter().zip(inserted) {
            let request = requests[i];
            outcomes[i] = Some(match (id, &request.idempotency_key) {
                (Some(id), _) => crate::ledger::reserved(id, &charges[i], after),
                (None, Some(key)) => {
                    // Nothing was inserted: take the plan back (it was the segment's last).
                    for charge in &charges[i] {
                        if let Some(u) = used.get_mut(&charge.key()) {
                            *u -= charge.amount;
                        }
                    }
                    let row = tx
                        .query_opt(&st.find_key, &[&request.subject, key])
                        .await?
                        // The key's holder was refunded in between: the one-operation path
                        // retries it.
                        .ok_or_else(|| LedgerError::Corrupt("idempotency key race".into()))?;
                    ReserveOutcome::Duplicate {
                        id: ReservationId(row.try_get(0)?),
                        state: ReservationState::parse(row.try_get(1)?)?,
                    }
                }
                (None, None) => {
                    return Err(LedgerError::Corrupt("reservation not inserted".into()));
                }
            });
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| LedgerError::Corrupt("reserve left undecided".into())))
        .collect()
}

/// Inserts the segment's reservations and their lines in one round trip: those without an
/// idempotency key in one statement, the keyed one (only a segment's last may have a key) in
/// its own. The id of each, or `None` where its idempotency key was taken.
async fn insert_reservations(
    tx: &Client,
    st: &Statements,
    requests: &[&ReserveRequest],
    charges: &[Vec<Charge<'_>>],
    segment: &[(usize, Vec<i64>)],
) -> Result<Vec<Option<i64>>, LedgerError> {
    let (plain, keyed) = match segment.split_last() {
        Some(((last, _), rest)) if requests[*last].idempotency_key.is_some() => (rest, Some(*last)),
        _ => (segment, None),
    };
    if plain
        .iter()
        .any(|&(i, _)| requests[i].idempotency_key.is_some())
    {
        return Err(LedgerError::Corrupt(
            "a keyed reservation inside a segment".into(),
        ));
    }
    let keyed = async {
        match keyed {
            Some(i) => Ok(Some(
                super::super::insert_reservation(tx, st, requests[i], &charges[i]).await?,
            )),
            None => Ok::<_, LedgerError>(None),
        }
    };
    // Polled together, the two statements go out back to back.
    let (ids, keyed) = futures::try_join!(insert_plain(tx, st, requests, charges, plain), keyed)?;
    Ok(ids.into_iter().map(Some).chain(keyed).collect())
}

/// Inserts reservations without an idempotency key, and their lines, in one statement.
async fn insert_plain(
    tx: &Client,
    st: &Statements,
    requests: &[&ReserveRequest],
    charges: &[Vec<Charge<'_>>],
    plain: &[(usize, Vec<i64>)],
) -> Result<Vec<i64>, LedgerError> {
    if plain.is_empty() {
        return Ok(Vec::new());
    }
    let mut subjects = Vec::with_capacity(plain.len());
    let mut chatflows = Vec::with_capacity(plain.len());
    let mut created = Vec::with_capacity(plain.len());
    let mut expires = Vec::with_capacity(plain.len());
    let mut states = Vec::with_capacity(plain.len());
    let (mut of, mut idx, mut policies, mut buckets, mut starts, mut amounts) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (n, &(i, _)) in (1_i64..).zip(plain) {
        let request = requests[i];
        subjects.push(request.subject.as_str());
        chatflows.push(request.chatflow.as_str());
        created.push(request.now.as_microsecond());
        expires.push(expiry(request.now, request.ttl));
        states.push(request.initial_state().as_str());
        for (line, charge) in (0_i32..).zip(&charges[i]) {
            of.push(n);
            idx.push(line);
            policies.push(charge.policy);
            buckets.push(charge.bucket);
            starts.push(charge.window_start);
            amounts.push(charge.amount);
        }
    }
    let rows = tx
        .query(
            &st.insert_many,
            &[
                &subjects, &chatflows, &created, &expires, &of, &idx, &policies, &buckets, &starts,
                &amounts, &states,
            ],
        )
        .await?;
    if rows.len() != plain.len() {
        return Err(LedgerError::Corrupt(format!(
            "inserted {} of {} reservations",
            rows.len(),
            plain.len()
        )));
    }
    rows.iter().map(|row| Ok(row.try_get(0)?)).collect()
}

/// Writes the final `used` of every bucket the batch changed (all of them locked), and the own
/// limit of those a reserve charged (`Some`), and deletes the `unused` ones it created; how
/// many rows it updated.
pub(super) async fn set_used(
    tx: &Client,
    st: &Statements,
    changed: &[(Key<'_>, i64, Option<Option<i64>>)],
    unused: &[Key<'_>],
) -> Result<u64, tokio_postgres::Error> {
    if changed.is_empty() && unused.is_empty() {
        return Ok(0);
    }
    let policies: Vec<&str> = changed.iter().map(|(k, ..)| k.0).collect();
    let buckets: Vec<&str> = changed.iter().map(|(k, ..)| k.1).collect();
    let starts: Vec<i64> = changed.iter().map(|(k, ..)| k.2).collect();
    let used: Vec<i64> = changed.iter().map(|(_, u, _)| *u).collect();
    let reserved: Vec<bool> = changed.iter().map(|(.., own)| own.is_some()).collect();
    let own_limits: Vec<Option<i64>> = changed.iter().map(|(.., own)| own.flatten()).collect();
    let unused_policies: Vec<&str> = unused.iter().map(|k| k.0).collect();
    let unused_buckets: Vec<&str> = unused.iter().map(|k| k.1).collect();
    let unused_starts: Vec<i64> = unused.iter().map(|k| k.2).collect();
    tx.execute(
        &st.set_used,
        &[
            &policies,
            &buckets,
            &starts,
            &used,
            &reserved,
            &own_limits,
            &unused_policies,
            &unused_buckets,
            &unused_starts,
        ],
    )
    .await
}
