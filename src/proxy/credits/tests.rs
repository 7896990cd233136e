//! Credits' own tests: retries, refunds of reserves whose client left, the reserve deadline.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_settle_is_retried_for_as_long_as_a_reservation_may_stay_open() {
    let started = tokio::time::Instant::now();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result: Result<(), LedgerError> = retried(
        || async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(LedgerError::Commit {
                message: "the database is failing over".into(),
                transient: true,
            })
        },
        ReservationId(1),
        "settle",
    )
    .await;
    assert!(result.is_err(), "gives up in the end");
    let waited = started.elapsed();
    assert!(
        // Each sleep's deadline rounds up to the timer's millisecond: ~50 of them may end a
        // few tens of milliseconds past the TTL (harmless: a settle still corrects a
        // reservation the sweep charged).
        waited >= RESERVATION_TTL - Duration::from_secs(30)
            && waited <= RESERVATION_TTL + Duration::from_secs(1),
        "gave up after {waited:?}"
    );
    let attempts = attempts.into_inner();
    assert!(
        attempts >= 40,
        "every 20 s at most (jitter included): {attempts} attempts"
    );
}

#[test]
fn retry_after_a_refusal_is_the_reset_in_whole_seconds() {
    let now: Timestamp = "2026-11-24T23:59:58.5Z".parse().expect("time");
    let reset: Timestamp = "2026-11-25T00:00:00Z".parse().expect("time");
    assert_eq!(secs_until(now, reset), 2);
    assert_eq!(secs_until(reset, reset), 1, "never 0");
    assert_eq!(secs_until(reset, now), 1, "a reset just passed");
}

async fn sqlite_credits(dir: &tempfile::TempDir) -> Credits {
    let url = crate::config::LedgerUrl::Sqlite(dir.path().join("ledger.db"));
    let ledger = ledger::open(&url).await.expect("ledger");
    Credits::new(ledger, Arc::new(Metrics::new()))
}

fn two_credits(subject: &str, now: Timestamp) -> (ReserveRequest, ledger::Window) {
    let window = ledger::window(crate::crd::Period::Never, "UTC", now).expect("window");
    let line = BudgetLine {
        policy: "team-a/budget".into(),
        bucket: "*".into(),
        limit: 100,
        own_limit: false,
        window,
        amount: 2,
    };
    let request = ReserveRequest {
        subject: subject.into(),
        chatflow: "team-a/bot".into(),
        idempotency_key: Some(format!("{subject}-key")),
        lines: vec![line],
        now,
        ttl: RESERVATION_TTL,
        final_cost: false,
    };
    (request, window)
}

#[tokio::test]
async fn a_reserve_whose_client_went_away_lands_and_is_refunded() {
    let dir = tempfile::tempdir().expect("dir");
    let credits = sqlite_credits(&dir).await;
    let now = Timestamp::now();
    // Kept: the reservation stays held.
    let (request, window) = two_credits("kept", now);
    let outcome = Landing::new(&credits, request).await.expect("reserve");
    assert!(matches!(outcome, ReserveOutcome::Reserved { .. }));
    let used = || credits.ledger.balance("team-a/budget", "*", &window);
    assert_eq!(used().await.expect("balance"), 2);
    // Dropped while its group commit runs: it lands in the background, then is refunded.
    let (request, _) = two_credits("gone", now);
    let mut landing = Landing::new(&credits, request);
    assert!(
        futures::poll!(&mut landing).is_pending(),
        "the reserve waits for the writer"
    );
    drop(landing);
    credits.background().close();
    credits.background().wait().await;
    assert_eq!(used().await.expect("balance"), 2, "only the kept charge");
    // Its key is free again.
    let (request, _) = two_credits("gone", now);
    let outcome = Landing::new(&credits, request).await.expect("reserve");
    assert!(
        matches!(outcome, ReserveOutcome::Reserved { .. }),
        "{outcome:?}"
    );
}

/// The usage log's outcomes of `subject`'s reservations.
async fn outcomes(credits: &Credits, subject: &str) -> Vec<ledger::ReservationState> {
    let rows = credits
        .ledger
        .usage(ledger::UsageFilter {
            subject: Some(subject.into()),
            ..ledger::UsageFilter::default()
        })
        .await
        .expect("usage");
    rows.into_iter().map(|row| row.outcome).collect()
}

/// Credits on a SQLite ledger in `dir` whose reserves give up after 200 ms, and another
/// process's connection holding the ledger's write lock (someone's sqlite3 shell in a
/// transaction): roll it back to let the writer on.
async fn stalled(dir: &tempfile::TempDir) -> (Credits, rusqlite::Connection) {
    let mut credits = sqlite_credits(dir).await;
    credits.reserve_deadline = Duration::from_millis(200);
    let outsider = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("open");
    outsider
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");
    (credits, outsider)
}

#[tokio::test]
async fn a_reserve_not_committed_in_time_is_refused_and_refunded_when_it_lands() {
    let dir = tempfile::tempdir().expect("dir");
    let (credits, outsider) = stalled(&dir).await;
    let now = Timestamp::now();
    let (mut request, window) = two_credits("stalled", now);
    request.idempotency_key = None;
    let started = tokio::time::Instant::now();
    let refused = credits.land(request).await;
    assert!(
        matches!(refused, Err(LedgerError::WriteTimeout(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at the deadline"
    );
    // The lock goes; the reservation lands after all, and is refunded.
    outsider.execute_batch("ROLLBACK").expect("unlock");
    credits.background().close();
    credits.background().wait().await;
    let used = credits.ledger.balance("team-a/budget", "*", &window);
    assert_eq!(used.await.expect("balance"), 0, "nothing kept");
    assert_eq!(
        outcomes(&credits, "stalled").await,
        [ledger::ReservationState::Refunded],
        "it landed, and was refunded"
    );
}

#[tokio::test]
async fn a_keyed_reserve_past_the_deadline_leaves_its_key_free_for_a_retry() {
    let dir = tempfile::tempdir().expect("dir");
    let (credits, outsider) = stalled(&dir).await;
    // The stall ends a second in: after the deadline, before the keyed wait is over.
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        outsider.execute_batch("ROLLBACK").expect("unlock");
    });
    let now = Timestamp::now();
    let (request, _) = two_credits("keyed", now);
    let refused = credits.land(request).await;
    assert!(
        matches!(refused, Err(LedgerError::WriteTimeout(_))),
        "{refused:?}"
    );
    unlock.join().expect("unlocked");
    // The prompt retry with the same key is served, not refused as a duplicate.
    let (request, _) = two_credits("keyed", now);
    let retried = credits.land(request).await.expect("reserve");
    assert!(
        matches!(retried, ReserveOutcome::Reserved { .. }),
        "{retried:?}"
    );
    assert_eq!(
        outcomes(&credits, "keyed").await,
        [ledger::ReservationState::Refunded],
        "the late one was refunded (the retry is held, not yet in the log)"
    );
}

#[tokio::test]
async fn a_refund_the_ledger_never_takes_is_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let credits = sqlite_credits(&dir).await;
    let lost = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("flowgate_ledger_corrections_lost_total{operation=\"refund\"} ")
            })
            .map(str::to_string)
    };
    let text = credits.metrics.encode().expect("encodes");
    assert_eq!(lost(&text).as_deref(), Some("0"), "from 0: {text}");
    // No such reservation: the ledger refuses it for good, and the refund is given up.
    credits.release(ReservationId(424_242)).await.expect("task");
    let text = credits.metrics.encode().expect("encodes");
    assert_eq!(lost(&text).as_deref(), Some("1"), "{text}");
}

/// A 402 says when the budget comes back, unless no prediction fits it after a reset either:
/// one dearer than the whole budget, or any on a budget of 0 (a tokens-only policy holds 0).
#[test]
fn a_budget_no_prediction_fits_has_no_retry_after() {
    assert!(!fits_no_budget(1, 5));
    assert!(!fits_no_budget(5, 5));
    assert!(fits_no_budget(6, 5));
    assert!(fits_no_budget(1, 0));
    assert!(fits_no_budget(0, 0), "a hold of 0 on a budget of 0");
}
