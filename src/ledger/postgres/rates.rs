//! Rate allowances as replicas share them ([`CreditLedger::take_rate`]): a row per key in the
//! unlogged `rate_limits` table, holding the instant (GCRA, on the database's clock) when the
//! key's allowance is whole again. One task per replica takes every request that queued while
//! it waited for the database in one statement, the requests of one key together, so a busy
//! replica pays a fraction of a round trip per limited prediction.
//!
//! [`CreditLedger::take_rate`]: crate::ledger::CreditLedger::take_rate

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::pool::Pool;
use crate::ledger::{LedgerError, RateTake};

/// Most requests one round trip takes.
const TAKES_PER_ROUND: usize = 1024;
/// How long a round may wait for the database: its askers gave up after a second
/// (`proxy::replicas`), and the requests queued behind it are waiting.
pub(super) const ROUND_LIMIT: Duration = Duration::from_secs(2);

/// The queue of [`takes`], the task that asks the database.
pub(super) struct Rates {
    queue: mpsc::UnboundedSender<Take>,
}

/// One request of key `key`'s allowance; interval and burst in microseconds.
struct Take {
    key: String,
    every: i64,
    burst: i64,
    reply: oneshot::Sender<Result<RateTake, LedgerError>>,
}

/// The requests of one key in a round, in the order they were asked.
struct Asked {
    every: i64,
    burst: i64,
    replies: Vec<oneshot::Sender<Result<RateTake, LedgerError>>>,
}

impl Rates {
    /// Starts the task on the current runtime; it stops once this is dropped.
    pub(super) fn new(pool: Arc<Pool>) -> Self {
        let (queue, asked) = mpsc::unbounded_channel();
        tokio::spawn(takes(pool, asked));
        Self { queue }
    }

    /// One request of `key`'s allowance. A request given up on before its round began takes
    /// nothing; one given up on later may have been admitted, and spent the allowance.
    pub(super) async fn take(
        &self,
        key: &str,
        interval: Duration,
        burst: Duration,
    ) -> Result<RateTake, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let every = every(interval);
        self.queue
            .send(Take {
                key: key.to_owned(),
                every,
                burst: whole_intervals(burst, interval, every),
                reply,
            })
            .map_err(|_| LedgerError::Stopped)?;
        let take = answer.await.map_err(|_| LedgerError::Stopped)??;
        Ok(RateTake {
            ahead: in_intervals(take.ahead, every, interval),
            ..take
        })
    }
}

/// `ahead` as the database counts it (each request `every` whole microseconds, `interval`
/// rounded up) in the caller's exact `interval`s: the allowance left is the number of
/// intervals that fit, and 7 a minute (8,571,428,571 ns, 8,571,429 µs in the database) would
/// otherwise read one request fewer, and the next in 426 ns, after the first.
fn in_intervals(ahead: Duration, every: i64, interval: Duration) -> Duration {
    let every = u128::try_from(every).unwrap_or(1).max(1);
    let nanos = ahead.as_micros().saturating_mul(interval.as_nanos()) / every;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Takes what is asked on `queue`, a round trip at a time for all that queued, until it closes.
async fn takes(pool: Arc<Pool>, mut queue: mpsc::UnboundedReceiver<Take>) {
    let mut asked = Vec::new();
    while queue.recv_many(&mut asked, TAKES_PER_ROUND).await > 0 {
        round(&pool, asked.drain(..)).await;
    }
}

/// One statement for every key asked; every asker is answered.
async fn round(pool: &Pool, asked: impl Iterator<Item = Take>) {
    // By key: the statement wants each key once, and sorted (the order it locks rows in).
    let mut keys: BTreeMap<String, Asked> = BTreeMap::new();
    // An asker that gave up (its time limit) takes nothing.
    for take in asked.filter(|take| !take.reply.is_closed()) {
        keys.entry(take.key)
            .or_insert_with(|| Asked {
                every: take.every,
                burst: take.burst,
                replies: Vec::new(),
            })
            .replies
            .push(take.reply);
    }
    if keys.is_empty() {
        return;
    }
    let names: Vec<&str> = keys.keys().map(String::as_str).collect();
    let counts: Vec<i64> = keys.values().map(|a| count(a.replies.len())).collect();
    let every: Vec<i64> = keys.values().map(|a| a.every).collect();
    let burst: Vec<i64> = keys.values().map(|a| a.burst).collect();
    let rows = tokio::time::timeout(ROUND_LIMIT, async {
        let mut conn = pool.get().await?;
        // Until the answer is read: a round given up on closes its connection (a half-open one
        // would hold every later round) rather than leave the next round queued behind it.
        conn.open = true;
        let rows = conn
            .client
            .query(&conn.st.take_rates, &[&names, &counts, &every, &burst])
            .await?;
        conn.open = false;
        Ok::<_, LedgerError>(rows)
    })
    .await
    .unwrap_or_else(|_| Err(gave_up()));
    let mut answered = BTreeMap::new();
    let failure = match rows {
        Ok(rows) => {
            for row in rows {
                let (key, ahead, taken): (String, i64, i64) =
                    match (row.try_get(0), row.try_get(1), row.try_get(2)) {
                        (Ok(key), Ok(ahead), Ok(taken)) => (key, ahead, taken),
                        _ => continue,
                    };
                answered.insert(key, (ahead, taken));
            }
            "the database answered no row for the key".to_owned()
        }
        Err(error) => error.to_string(),
    };
    for (key, asked) in keys {
        match answered.get(&key) {
            Some(&(ahead, taken)) => {
                let answers = answers(ahead, taken, asked.every, asked.burst);
                for (reply, answer) in asked.replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            None => {
                for reply in asked.replies {
                    let _ = reply.send(Err(LedgerError::Commit {
                        message: format!("rate allowances: {failure}"),
                        transient: true,
                    }));
                }
            }
        }
    }
}

/// What a key's askers are answered, in the order they asked, when the statement admitted the
/// first `taken` of them and left the key's instant `ahead` of now (in microseconds, as
/// `every` and `burst`): each admitted request moved the instant one interval on, and a
/// refusal is past the burst (another replica may have moved it since the database answered).
fn answers(ahead: i64, taken: i64, every: i64, burst: i64) -> impl Iterator<Item = RateTake> {
    (0_i64..).map(move |i| {
        if i < taken {
            RateTake {
                admitted: true,
                ahead: duration(ahead - (taken - 1 - i) * every),
            }
        } else {
            RateTake {
                admitted: false,
                ahead: duration(ahead.max(burst.saturating_add(1))),
            }
        }
    })
}

/// A round that took longer than [`ROUND_LIMIT`].
pub(super) fn gave_up() -> LedgerError {
    LedgerError::Commit {
        message: format!("no answer within {} s", ROUND_LIMIT.as_secs()),
        transient: true,
    }
}

/// A request's interval in the microseconds the statements count in: rounded up, never down
/// (1.7 µs a request taken as 1 µs would admit 1.7 times the rate declared), and at least one
/// (a rate the clock cannot tell apart from none is still a limit).
fn every(interval: Duration) -> i64 {
    micros(interval.saturating_add(Duration::from_nanos(999))).max(1)
}

/// `burst` in microseconds as the whole number of `interval`s it is, each `every` long: the
/// statements admit `burst / every + 1` at once, and `burst` rounded down on its own would
/// admit one fewer than the limit's `requests` where the interval is not a whole number of
/// microseconds (3 a second: 2).
fn whole_intervals(burst: Duration, interval: Duration, every: i64) -> i64 {
    match burst.as_nanos().checked_div(interval.as_nanos()) {
        Some(intervals) => i64::try_from(intervals)
            .unwrap_or(i64::MAX)
            .saturating_mul(every),
        None => micros(burst),
    }
}

/// `d` in microseconds, as the statements take durations (saturating).
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_rounded_up_to_a_whole_microsecond() {
        assert_eq!(every(Duration::from_nanos(1_666)), 2);
        assert_eq!(every(Duration::from_micros(3)), 3);
        assert_eq!(every(Duration::ZERO), 1);
        assert_eq!(every(Duration::MAX), i64::MAX);
    }

    #[test]
    fn a_burst_is_a_whole_number_of_rounded_intervals() {
        // The limits as `ratelimit` gives them: `per / requests` and `per` less one of it.
        for (requests, per) in [
            (3_u32, 1_u64),
            (7, 60),
            (45, 60),
            (90, 60),
            (30, 60),
            (10, 1),
        ] {
            let per = Duration::from_secs(per);
            let interval = per / requests;
            let every = every(interval);
            let burst = whole_intervals(per - interval, interval, every);
            // The statements admit burst / every + 1 at once: the whole limit.
            assert_eq!(
                burst / every + 1,
                i64::from(requests),
                "{requests} a {per:?}"
            );
        }
        assert_eq!(
            whole_intervals(Duration::from_secs(1), Duration::ZERO, 1),
            1_000_000
        );
    }

    fn taken(ahead: i64, taken: i64, asked: usize) -> Vec<(bool, u64)> {
        answers(ahead, taken, 10, 25)
            .take(asked)
            .map(|t| {
                (
                    t.admitted,
                    u64::try_from(t.ahead.as_micros()).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    #[test]
    fn each_admitted_request_is_one_interval_further_ahead_in_the_order_they_asked() {
        // Three of five admitted from an instant 2 ahead: 12, 22, 32; the rest past the burst.
        assert_eq!(
            taken(32, 3, 5),
            [(true, 12), (true, 22), (true, 32), (false, 32), (false, 32)]
        );
        // A lone request: as one take alone.
        assert_eq!(taken(10, 1, 1), [(true, 10)]);
    }

    #[test]
    fn the_databases_microseconds_are_read_as_the_callers_intervals() {
        let interval = Duration::from_nanos(60_000_000_000 / 7);
        let every = every(interval);
        assert_eq!(every, 8_571_429);
        // After the first request of a full allowance: one interval ahead, exactly.
        assert_eq!(in_intervals(duration(every), every, interval), interval);
        assert_eq!(
            in_intervals(duration(6 * every), every, interval),
            interval * 6
        );
        // Whole microseconds stay what they are.
        let second = Duration::from_secs(1);
        assert_eq!(in_intervals(second * 3, 1_000_000, second), second * 3);
    }

    #[test]
    fn a_refusal_is_past_the_burst_even_when_the_instant_moved_back_since() {
        assert_eq!(taken(5, 0, 2), [(false, 26), (false, 26)]);
        assert_eq!(taken(40, 0, 1), [(false, 40)]);
    }
}
