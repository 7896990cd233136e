//! Rate allowances shared through PostgreSQL: one allowance per key across replicas, several
//! keys in one statement, a take the database does not answer, the unlogged table, and a rule
//! whose period changed.

use super::*;

use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_rate_allowance_per_key() {
    let store = crate::support::postgres("shared_rates").await;
    let replicas = [store.open().await, store.open().await, store.open().await];
    // 3 a minute: one every 20 s, up to two intervals ahead.
    let (interval, burst) = (Duration::from_secs(20), Duration::from_secs(40));
    let mut taken = Vec::new();
    for i in 0..4 {
        let take = replicas[i % 3]
            .take_rate("team-a/limited user:bob", interval, burst)
            .await
            .expect("take")
            .expect("PostgreSQL shares allowances");
        taken.push(take);
    }
    let admitted: Vec<bool> = taken.iter().map(|t| t.admitted).collect();
    assert_eq!(admitted, vec![true, true, true, false], "{taken:?}");
    // Each admitted request moved the instant an interval on; the refusal waits for one.
    for (take, whole) in taken.iter().zip([20, 40, 60, 60]) {
        let ahead = take.ahead.as_secs_f64();
        assert!(
            ahead <= f64::from(whole) && ahead > f64::from(whole) - 5.0,
            "{take:?} should be about {whole} s ahead"
        );
    }
    // Another key, and a burst of takes at once across the replicas: exactly the allowance.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let ledger = replicas[i % 3].clone();
            tokio::spawn(async move {
                ledger
                    .take_rate(
                        "team-a/limited user:carol",
                        Duration::from_secs(6),
                        Duration::from_secs(54),
                    )
                    .await
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        let take = task.await.expect("task").expect("take").expect("shared");
        if take.admitted {
            admitted.push(take.ahead);
        }
        // A refusal is past the burst, however the takes interleaved.
        assert!(
            take.admitted || take.ahead > Duration::from_secs(54),
            "{take:?}"
        );
    }
    assert_eq!(admitted.len(), 10, "10 a minute, however many replicas");
    // 7 a minute is no whole number of microseconds (the database counts 8,571,429 each): the
    // first take of a fresh key is still exactly one of the caller's intervals ahead, which
    // the allowance headers count in (6 left, the next in 9 s).
    let seventh = Duration::from_nanos(60_000_000_000 / 7);
    let take = replicas[0]
        .take_rate("team-a/limited user:dave", seventh, seventh * 6)
        .await
        .expect("take")
        .expect("shared");
    assert!(take.admitted);
    assert_eq!(take.ahead, seventh);
    // Each admitted take moved the instant 6 s on, also those a replica took in one statement.
    admitted.sort();
    for (ahead, whole) in admitted.iter().zip((6..).step_by(6)) {
        let ahead = ahead.as_secs_f64();
        assert!(
            ahead <= f64::from(whole) && ahead > f64::from(whole) - 3.0,
            "{admitted:?}: one should be about {whole} s ahead"
        );
    }
}

/// One replica's takes of several keys at once, each key with its own rate, some new and one
/// spent before: each key admits exactly its own allowance, one interval apart, whichever
/// takes shared a statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_of_several_keys_at_once_each_get_their_own_rate() {
    let store = crate::support::postgres("rates_several_keys").await;
    let ledger = store.open().await;
    let secs = Duration::from_secs;
    // (key, interval, burst, admitted of 12 at once, the first admitted's instant ahead)
    let keys = [
        ("x", secs(6), secs(54), 10, 6),
        ("y", secs(10), secs(40), 4, 20), // one taken before: 5 in all
        ("z", secs(1), secs(2), 3, 1),
    ];
    let before = ledger
        .take_rate("y", secs(10), secs(40))
        .await
        .expect("take")
        .expect("shared");
    assert!(before.admitted);
    let tasks: Vec<_> = (0..12)
        .flat_map(|_| keys)
        .map(|(key, interval, burst, ..)| {
            let ledger = ledger.clone();
            tokio::spawn(async move { (key, ledger.take_rate(key, interval, burst).await) })
        })
        .collect();
    let mut admitted: HashMap<&str, Vec<Duration>> = HashMap::new();
    for task in tasks {
        let (key, take) = task.await.expect("task");
        let take = take.expect("take").expect("shared");
        if take.admitted {
            admitted.entry(key).or_default().push(take.ahead);
        }
    }
    for (key, interval, _, count, first) in keys {
        let mut aheads = admitted.remove(key).unwrap_or_default();
        assert_eq!(aheads.len(), count, "{key}: {aheads:?}");
        aheads.sort();
        for (i, ahead) in (0_u32..).zip(&aheads) {
            let whole = secs(first) + interval * i;
            assert!(
                *ahead <= whole && *ahead + secs(2) > whole,
                "{key}: {aheads:?}, one should be about {whole:?} ahead"
            );
        }
    }
}

/// A round the database does not answer (a row locked by someone else; as well a connection
/// gone half-open) is given up on, and the next round runs on a fresh connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_the_database_does_not_answer_holds_up_no_later_take() {
    let store = crate::support::postgres("rates_stuck_round").await;
    let ledger = store.open().await;
    let (interval, burst) = (Duration::from_secs(1), Duration::from_secs(10));
    ledger
        .take_rate("stuck", interval, burst)
        .await
        .expect("take")
        .expect("shared");
    // Another session holds the key's row for 6 s.
    let holder = store.sql().await;
    let holder = tokio::spawn(async move {
        holder
            .batch_execute(
                "BEGIN; SELECT * FROM rate_limits WHERE key = 'stuck' FOR UPDATE;
                 SELECT pg_sleep(6); COMMIT;",
            )
            .await
            .expect("held");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = std::time::Instant::now();
    let stuck = ledger.take_rate("stuck", interval, burst).await;
    assert!(
        stuck.as_ref().is_err_and(|e| e.transient()),
        "given up on: {stuck:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    let free = ledger
        .take_rate("free", interval, burst)
        .await
        .expect("the next round answers")
        .expect("shared");
    assert!(free.admitted);
    assert!(!holder.is_finished(), "the row was still held");
    holder.await.expect("holder");
}

/// The shared allowances are unlogged (a take waits for no WAL flush): a fresh database's
/// table, and one an earlier flowgate made logged, which keeps its rows and so its allowances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_allowances_are_unlogged_and_an_older_logged_table_is_converted() {
    const UNLOGGED: &str = "SELECT count(*) FROM pg_class
                            WHERE oid = to_regclass('rate_limits') AND relpersistence = 'u'";
    let fresh = crate::support::postgres("rates_unlogged_fresh").await;
    fresh.open().await;
    assert_eq!(fresh.count(UNLOGGED).await, 1, "a fresh database's table");

    let older = crate::support::postgres("rates_unlogged_older").await;
    // As the flowgate before this one left it: logged, bob's allowance spent an hour ahead.
    older
        .execute(
            "CREATE TABLE rate_limits (key text PRIMARY KEY, full_at_us bigint NOT NULL);
             INSERT INTO rate_limits VALUES
                 ('team-a/limited user:bob',
                  (extract(epoch FROM clock_timestamp()) * 1e6)::int8 + 3600000000)",
        )
        .await;
    assert_eq!(older.count(UNLOGGED).await, 0);
    let ledger = older.open().await;
    assert_eq!(older.count(UNLOGGED).await, 1, "converted on open");
    let take = ledger
        .take_rate(
            "team-a/limited user:bob",
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await
        .expect("take")
        .expect("shared");
    assert!(
        !take.admitted,
        "the allowance spent before is still spent: {take:?}"
    );
}

/// A rule whose period was shortened (10 an hour, spent, now 10 a minute) starts spent under
/// the new rule, not with the old instant's wait: its next take is one new interval away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_period_starts_spent_under_the_new_rule() {
    let store = crate::support::postgres("rates_shortened").await;
    let ledger = store.open().await;
    let take = async |interval: Duration, burst: Duration| {
        ledger
            .take_rate("team-a/limited user:erin", interval, burst)
            .await
            .expect("take")
            .expect("shared")
    };
    let hourly = (Duration::from_secs(360), Duration::from_secs(3240));
    for _ in 0..10 {
        assert!(take(hourly.0, hourly.1).await.admitted);
    }
    let minutely = (Duration::from_secs(6), Duration::from_secs(54));
    let refused = take(minutely.0, minutely.1).await;
    assert!(!refused.admitted, "{refused:?}");
    assert!(
        refused.ahead <= Duration::from_secs(60),
        "at most one new period ahead, not the hour: {refused:?}"
    );
}

/// After an edit of a rule's rate, what a caller spent counts as that many requests under the
/// new rate, across replicas as in one process (`proxy::ratelimit::rescaled`): 60 sent under
/// 60 a minute spend all of 60 an hour; 1 sent under 1 an hour leaves 59 of 60 a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rate_edit_what_was_spent_counts_as_requests_under_the_new_rate() {
    let store = crate::support::postgres("rates_rescaled").await;
    let ledger = store.open().await;
    let take = async |key: &str, (interval, burst): (Duration, Duration)| {
        ledger
            .take_rate(key, interval, burst)
            .await
            .expect("take")
            .expect("shared")
    };
    let per_minute = (Duration::from_secs(1), Duration::from_secs(59));
    let per_hour = (Duration::from_secs(60), Duration::from_secs(3540));
    for _ in 0..60 {
        assert!(take("tightened", per_minute).await.admitted);
    }
    let refused = take("tightened", per_hour).await;
    assert!(!refused.admitted, "all of the hour's 60 spent: {refused:?}");

    let hourly_one = (Duration::from_secs(3600), Duration::ZERO);
    assert!(take("loosened", hourly_one).await.admitted);
    for i in 0..59 {
        let taken = take("loosened", per_minute).await;
        assert!(
            taken.admitted,
            "request {} of the minute's 60: {taken:?}",
            i + 2
        );
    }
    assert!(!take("loosened", per_minute).await.admitted, "the 61st");
}
