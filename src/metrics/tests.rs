//! What each metric exports, as Prometheus reads it.

use super::*;

#[test]
fn recorded_values_are_exported() {
    let metrics = Metrics::new();
    metrics.observe_request("prediction", 200, Duration::from_millis(3));
    metrics.decision("deny", "forbidden");
    metrics.upstream_error("timeout");
    metrics.ledger_call("reserve", Duration::from_micros(300));
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("flowgate_proxy_requests_total{route=\"prediction\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_proxy_decisions_total{decision=\"deny\",reason=\"forbidden\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_upstream_errors_total{reason=\"timeout\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_proxy_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_ledger_operation_duration_seconds_count{operation=\"reserve\"} 1"),
        "{text}"
    );
}

#[test]
fn counters_alerts_watch_start_at_zero() {
    let metrics = Metrics::new();
    metrics.policy_seen("team-a/monthly", &[80, 100]);
    let text = metrics.encode().expect("encodes");
    for line in [
        "flowgate_proxy_decisions_total{decision=\"deny\",reason=\"ledger_unavailable\"} 0",
        "flowgate_proxy_decisions_total{decision=\"allow\",reason=\"granted\"} 0",
        "flowgate_credits_charged_total{policy=\"team-a/monthly\"} 0",
        "flowgate_credits_adjusted_total{policy=\"team-a/monthly\",direction=\"given\"} 0",
        "flowgate_credits_adjusted_total{policy=\"team-a/monthly\",direction=\"taken\"} 0",
        "flowgate_credit_alerts_total{policy=\"team-a/monthly\",percent=\"80\"} 0",
        "flowgate_credit_alerts_total{policy=\"team-a/monthly\",percent=\"100\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}

#[test]
fn a_policys_counters_go_with_it_and_its_thresholds() {
    let metrics = Metrics::new();
    let mut series = PolicySeries::default();
    let (monthly, daily): (Arc<str>, Arc<str>) = ("team-a/monthly".into(), "team-a/daily".into());
    series.follow(
        &metrics,
        [(&monthly, [80, 100].as_slice()), (&daily, [90].as_slice())],
    );
    metrics.credit_alert("team-a/monthly", 80);
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("flowgate_credit_alerts_total{policy=\"team-a/monthly\",percent=\"80\"} 1")
    );
    assert!(text.contains("flowgate_credits_charged_total{policy=\"team-a/daily\"} 0"));

    // monthly drops its 80 % alert; daily is deleted.
    series.follow(&metrics, [(&monthly, [100].as_slice())]);
    let text = metrics.encode().expect("encodes");
    assert!(!text.contains("team-a/daily"), "{text}");
    assert!(!text.contains("percent=\"80\""), "{text}");
    for line in [
        "flowgate_credit_alerts_total{policy=\"team-a/monthly\",percent=\"100\"} 0",
        "flowgate_credits_charged_total{policy=\"team-a/monthly\"} 0",
        "flowgate_credits_adjusted_total{policy=\"team-a/monthly\",direction=\"given\"} 0",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }

    // A prediction still under way when daily went counts a charge: removed at the next change.
    metrics.credits_charged("team-a/daily", 3);
    series.follow(&metrics, [(&monthly, [100].as_slice())]);
    let text = metrics.encode().expect("encodes");
    assert!(!text.contains("team-a/daily"), "{text}");

    // daily comes back: its counters start again at 0.
    series.follow(
        &metrics,
        [(&monthly, [100].as_slice()), (&daily, [90].as_slice())],
    );
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("flowgate_credit_alerts_total{policy=\"team-a/daily\",percent=\"90\"} 0")
    );
}

#[test]
fn token_cache_lookups_are_read_at_each_scrape() {
    let metrics = Metrics::new();
    let text = metrics.encode().expect("encodes");
    assert!(!text.contains("token_cache"), "no source yet: {text}");
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(3));
    let source = hits.clone();
    metrics.token_cache.read_from(move || {
        Some(crate::identity::Lookups {
            hits: source.load(std::sync::atomic::Ordering::Relaxed),
            misses: 2,
        })
    });
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("# TYPE flowgate_token_cache_lookups counter"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_token_cache_lookups_total{result=\"miss\"} 2"),
        "{text}"
    );
    hits.store(5, std::sync::atomic::Ordering::Relaxed);
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("flowgate_token_cache_lookups_total{result=\"hit\"} 5"),
        "{text}"
    );
}

#[test]
fn taking_the_lead_before_any_success_starts_the_last_success_clock() {
    let metrics = Metrics::new();
    let controller = &metrics.controller;
    let line = |metrics: &Metrics| {
        let text = metrics.encode().expect("encodes");
        text.lines()
            .find_map(|l| l.strip_prefix("flowgate_sync_last_success_timestamp_seconds "))
            .and_then(|v| v.parse::<i64>().ok())
            .expect("the gauge")
    };
    assert_eq!(line(&metrics), 0, "a replica that never led");
    controller.set_leader(false);
    assert_eq!(line(&metrics), 0);
    let before = jiff::Timestamp::now().as_second();
    controller.set_leader(true);
    let led = line(&metrics);
    assert!(
        led >= before && led <= jiff::Timestamp::now().as_second(),
        "{led}"
    );
    // A failed pass moves nothing; losing and taking the lead again neither.
    controller.sync_pass(false, SyncCounts::default(), led + 60);
    controller.set_leader(false);
    controller.set_leader(true);
    assert_eq!(line(&metrics), led);
}

#[test]
fn controller_values_are_exported() {
    let metrics = Metrics::new();
    let controller = &metrics.controller;
    controller.reconciled("Chatflow", true, Duration::from_millis(2));
    controller.reconcile_error("Chatflow", "connect");
    controller.status_written("Chatflow");
    let counts = SyncCounts {
        added: 2,
        updated: 1,
        removed: 0,
        total: 7,
        errors: 0,
    };
    controller.sync_pass(true, counts, 1_700_000_000);
    // A failed pass later: the last one's time moves, the last success's does not.
    let failed = SyncCounts {
        total: 7,
        ..SyncCounts::default()
    };
    controller.sync_pass(false, failed, 1_700_000_060);
    controller.set_sync_interval(Duration::from_secs(60));
    // Leading after a success leaves its time alone.
    controller.set_leader(true);
    assert_eq!(controller.reconciles("Chatflow"), 1);
    assert_eq!(controller.status_writes("Chatflow"), 1);
    let text = metrics.encode().expect("encodes");
    for line in [
        "flowgate_reconciles_total{kind=\"Chatflow\",result=\"success\"} 1",
        "flowgate_reconcile_errors_total{kind=\"Chatflow\",reason=\"connect\"} 1",
        "flowgate_status_writes_total{kind=\"Chatflow\"} 1",
        "flowgate_sync_passes_total{outcome=\"success\"} 1",
        "flowgate_sync_passes_total{outcome=\"failed\"} 1",
        "flowgate_sync_chatflows_total{change=\"added\"} 2",
        "flowgate_sync_last_chatflows{change=\"total\"} 7",
        "flowgate_sync_last_timestamp_seconds 1700000060",
        "flowgate_sync_last_success_timestamp_seconds 1700000000",
        "flowgate_sync_interval_seconds 60",
        "flowgate_controller_leader 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn credits_charged_saturates_instead_of_wrapping() {
    let metrics = Metrics::new();
    metrics.credits_charged("team-a/daily", 5);
    metrics.credits_charged("team-a/daily", u64::MAX);
    metrics.credits_charged("team-a/daily", 1);
    let text = metrics.encode().expect("encodes");
    let line = format!(
        "flowgate_credits_charged_total{{policy=\"team-a/daily\"}} {}",
        u64::MAX
    );
    assert!(text.contains(&line), "{line} not in {text}");
}
