//! The chart's alerts (`metrics.prometheusRule`): installed as a PrometheusRule, checked by
//! `promtool check rules`, and unit-tested with `promtool test rules` — each alert stays quiet
//! on healthy series and fires, with the labels and annotations the chart gives it, on series
//! that show the failure it names.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/promtool.sh setup`;
//! `eval "$(scripts/promtool.sh env)"` sets `FLOWGATE_PROMTOOL`).

#[allow(dead_code)]
mod chart_support;
mod support;

use serde_json::{Value, json};

use chart_support::{install, install_monitoring_crd, monitoring_objects};

fn promtool(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let Some(bin) = std::env::var_os("FLOWGATE_PROMTOOL") else {
        panic!(
            "FLOWGATE_PROMTOOL is not set: run scripts/test.sh, or `scripts/promtool.sh setup` \
             and `eval \"$(scripts/promtool.sh env)\"`"
        );
    };
    let out = std::process::Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The series of one flowgate replica in one state, for `promtool test rules`.
fn series(sel: &str, healthy: bool) -> Vec<Value> {
    let pick = |good: &str, bad: &str| if healthy { good } else { bad }.to_string();
    let s = |metric: &str, labels: &str, values: String| {
        let labels = if labels.is_empty() {
            sel.to_string()
        } else {
            format!("{sel}, {labels}")
        };
        json!({"series": format!("{metric}{{{labels}}}"), "values": values})
    };
    vec![
        s("up", r#"instance="10.0.0.7:9090""#, pick("1x40", "0x40")),
        s(
            "flowgate_proxy_decisions_total",
            r#"decision="deny", reason="ledger_unavailable""#,
            pick("0x40", "0+10x40"),
        ),
        s(
            "flowgate_proxy_decisions_total",
            r#"decision="deny", reason="token_review_unavailable""#,
            pick("0x40", "0+5x40"),
        ),
        s(
            "flowgate_proxy_decisions_total",
            r#"decision="deny", reason="policy_invalid""#,
            pick("0x40", "0+3x40"),
        ),
        s(
            "flowgate_proxy_decisions_total",
            r#"decision="deny", reason="overloaded""#,
            pick("0x40", "0+2x40"),
        ),
        s(
            "flowgate_proxy_decisions_total",
            r#"decision="allow", reason="granted""#,
            "0+100x40".into(),
        ),
        s(
            "flowgate_ledger_operation_duration_seconds_bucket",
            r#"operation="reserve", le="0.001""#,
            pick("0+100x40", "0x40"),
        ),
        s(
            "flowgate_ledger_operation_duration_seconds_bucket",
            r#"operation="reserve", le="0.5""#,
            "0+100x40".into(),
        ),
        s(
            "flowgate_ledger_operation_duration_seconds_bucket",
            r#"operation="reserve", le="+Inf""#,
            "0+100x40".into(),
        ),
        s(
            "flowgate_proxy_requests_total",
            r#"route="prediction", status="200""#,
            "0+100x40".into(),
        ),
        s(
            "flowgate_upstream_errors_total",
            r#"reason="status_5xx""#,
            pick("0+1x40", "0+10x40"),
        ),
        s(
            "flowgate_reconcile_errors_total",
            r#"kind="Chatflow", reason="FlowiseUnavailable""#,
            pick("0x40", "0+1x40"),
        ),
        s(
            "flowgate_sync_passes_total",
            r#"outcome="success""#,
            pick("0+1x40", "0x40"),
        ),
        s(
            "flowgate_sync_passes_total",
            r#"outcome="failed""#,
            pick("0x40", "0+1x40"),
        ),
        // Healthy: the last success is now (the series' minute × 60 is `time()`).
        s(
            "flowgate_sync_last_success_timestamp_seconds",
            "",
            pick("0+60x40", "0x40"),
        ),
        s("flowgate_sync_interval_seconds", "", "60x40".into()),
        s("flowgate_controller_leader", "", pick("1x40", "0x40")),
        // Failing: one restart at 20 minutes (a counter that appears at 0 first).
        s(
            "flowgate_controller_restarts_total",
            "",
            pick("0x40", "0x20 1x20"),
        ),
        s(
            "flowgate_index_invalid_resources",
            r#"kind="CreditPolicy""#,
            pick("0x40", "1x40"),
        ),
        s(
            "flowgate_index_invalid_resources",
            r#"kind="Chatflow""#,
            "0x40".into(),
        ),
        s(
            "flowgate_crd_fields_missing",
            r#"crd="chatflowaccesses.flowgate.io""#,
            pick("0x40", "2x40"),
        ),
        s(
            "flowgate_crd_fields_missing",
            r#"crd="chatflows.flowgate.io""#,
            "0x40".into(),
        ),
        s(
            "flowgate_crd_readable",
            r#"crd="creditpolicies.flowgate.io""#,
            pick("1x40", "0x40"),
        ),
        s(
            "flowgate_ledger_prune_failures_total",
            "",
            pick("0x40", "0+1x40"),
        ),
        s(
            "flowgate_ledger_corrections_lost_total",
            r#"operation="refund""#,
            pick("0x40", "0x20 3x20"),
        ),
        s(
            "flowgate_index_watch_errors_total",
            r#"kind="ChatflowAccess""#,
            // Healthy: an error now and then (an API server restart); failing: one a minute, as
            // against an API server that accepts and never answers (45 s, then the backoff).
            pick("0+0.3x40", "0+1x40"),
        ),
        s(
            "flowgate_index_watch_errors_total",
            r#"kind="Chatflow""#,
            "0x40".into(),
        ),
    ]
}

#[tokio::test]
async fn the_alerts_pass_promtool_and_fire_on_the_failures_they_name() {
    let client = support::client().await;
    install_monitoring_crd(&client, "PrometheusRule").await;
    install_monitoring_crd(&client, "ServiceMonitor").await;
    let ns = support::fresh_namespace(&client, "chart-alerts").await;
    let values = json!({"metrics": {
        "serviceMonitor": {"enabled": true},
        "prometheusRule": {"enabled": true, "labels": {"release": "prometheus"},
                           "alertLabels": {"team": "platform"}}}});
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let name = format!("{ns}-flowgate");
    let rules = monitoring_objects(&client, &ns, "PrometheusRule");
    let rule = rules.get(&name).await.expect("PrometheusRule stored");
    assert_eq!(
        rule.metadata.labels.as_ref().and_then(|l| l.get("release")),
        Some(&"prometheus".to_string())
    );
    let groups = rule.data["spec"]["groups"].clone();

    let dir = tempfile::tempdir().expect("tempdir");
    let rules_file = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_file,
        serde_json::to_string(&json!({"groups": groups})).expect("JSON is YAML"),
    )
    .expect("write rules");
    let (ok, out) = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(ok, "promtool check rules: {out}");

    let alerts: Vec<&Value> = groups[0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .collect();
    let names: Vec<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().expect("alert name"))
        .collect();
    assert_eq!(
        names,
        [
            "FlowgateDown",
            "FlowgateLedgerUnavailable",
            "FlowgateInvalidPolicyRefusing",
            "FlowgateIdentityUnavailable",
            "FlowgateLedgerSlow",
            "FlowgateLedgerRetentionFailing",
            "FlowgateLedgerCorrectionsLost",
            "FlowgateFlowiseErrors",
            "FlowgateBodyMemoryFull",
            "FlowgateInvalidResources",
            "FlowgateCRDsStale",
            "FlowgateCRDsUnchecked",
            "FlowgateIndexStale",
            "FlowgateReconcileErrors",
            "FlowgateFlowiseSyncFailing",
            "FlowgateNoControllerLeader",
            "FlowgateControllerRestarted",
        ]
    );

    // The labels each alert carries beyond its own: what its expression keeps.
    let sel = format!(r#"namespace="{ns}", job="{name}""#);
    let kept = |alert: &str| -> Value {
        match alert {
            "FlowgateDown" => {
                json!({"namespace": ns, "job": name, "instance": "10.0.0.7:9090"})
            }
            "FlowgateReconcileErrors" => json!({"kind": "Chatflow"}),
            "FlowgateInvalidResources" => json!({"kind": "CreditPolicy"}),
            "FlowgateCRDsStale" => json!({"crd": "chatflowaccesses.flowgate.io"}),
            "FlowgateCRDsUnchecked" => json!({"crd": "creditpolicies.flowgate.io"}),
            "FlowgateIndexStale" => json!({"kind": "ChatflowAccess"}),
            _ => json!({}),
        }
    };
    let quiet: Vec<Value> = names
        .iter()
        .map(|alert| json!({"alertname": alert, "eval_time": "30m", "exp_alerts": []}))
        .collect();
    let firing: Vec<Value> = alerts
        .iter()
        .map(|alert| {
            let alertname = alert["alert"].as_str().expect("name");
            let mut labels = kept(alertname);
            for (k, v) in alert["labels"].as_object().expect("labels") {
                labels[k] = v.clone();
            }
            assert_eq!(labels["team"], "platform", "{alertname}: alertLabels");
            json!({"alertname": alertname, "eval_time": "30m", "exp_alerts": [{
                "exp_labels": labels,
                "exp_annotations": alert["annotations"],
            }]})
        })
        .collect();
    // No replica scraped at all: `up` is absent, with the selector's labels.
    let mut absent_labels = json!({"namespace": ns, "job": name});
    let down = alerts[0];
    for (k, v) in down["labels"].as_object().expect("labels") {
        absent_labels[k] = v.clone();
    }
    let identity_alert = firing
        .iter()
        .find(|t| t["alertname"] == "FlowgateIdentityUnavailable")
        .cloned()
        .expect("the identity alert is among the rules");
    let mut sync_alert = firing
        .iter()
        .find(|t| t["alertname"] == "FlowgateFlowiseSyncFailing")
        .cloned()
        .expect("the sync alert is among the rules");
    sync_alert["eval_time"] = json!("130m");
    let mut sync_after_lead = sync_alert.clone();
    sync_after_lead["eval_time"] = json!("40m");
    let flowise_alert = firing
        .iter()
        .find(|t| t["alertname"] == "FlowgateFlowiseErrors")
        .cloned()
        .expect("the Flowise alert is among the rules");
    let unit_tests = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": series(&sel, true), "alert_rule_test": quiet},
            {"interval": "1m", "input_series": series(&sel, false), "alert_rule_test": firing},
            // The other reason of FlowgateIdentityUnavailable, alone.
            {"interval": "1m",
             "input_series": [{"series": format!(
                 r#"flowgate_proxy_decisions_total{{{sel}, decision="deny", reason="keys_unavailable"}}"#),
                 "values": "0+5x40"}],
             "alert_rule_test": [identity_alert]},
            // An hourly sync: a success 30 minutes ago is on time; 2 hours and 10 minutes is
            // not. Without any sync pass (no controller), nothing fires.
            {"interval": "1m",
             "input_series": [
                 {"series": format!("flowgate_sync_last_success_timestamp_seconds{{{sel}}}"), "values": "0x150"},
                 {"series": format!("flowgate_sync_interval_seconds{{{sel}}}"), "values": "3600x150"},
                 {"series": format!(r#"flowgate_sync_passes_total{{{sel}, outcome="success"}}"#), "values": "1x150"}],
             "alert_rule_test": [
                 {"alertname": "FlowgateFlowiseSyncFailing", "eval_time": "30m", "exp_alerts": []},
                 sync_alert.clone()]},
            // A replica that took the lead at 10 minutes (its clock starts there) and whose passes
            // fail: quiet for two intervals from then (at least 15 minutes), then firing.
            {"interval": "1m",
             "input_series": [
                 {"series": format!("flowgate_sync_last_success_timestamp_seconds{{{sel}}}"), "values": "600x60"},
                 {"series": format!("flowgate_sync_interval_seconds{{{sel}}}"), "values": "60x60"},
                 {"series": format!(r#"flowgate_sync_passes_total{{{sel}, outcome="failed"}}"#), "values": "1x60"}],
             "alert_rule_test": [
                 // 28 minutes: past 15 from 1970's 0 and its 5 of `for`, not from the lead.
                 {"alertname": "FlowgateFlowiseSyncFailing", "eval_time": "28m", "exp_alerts": []},
                 sync_after_lead]},
            {"interval": "1m",
             "input_series": [
                 {"series": format!("flowgate_sync_last_success_timestamp_seconds{{{sel}}}"), "values": "0x40"},
                 {"series": format!("flowgate_sync_interval_seconds{{{sel}}}"), "values": "60x40"}],
             "alert_rule_test": [
                 {"alertname": "FlowgateFlowiseSyncFailing", "eval_time": "30m", "exp_alerts": []}]},
            // One blip each: a failed reserve batch, one failed retention run. Quiet.
            {"interval": "1m",
             "input_series": [
                 {"series": format!(
                     r#"flowgate_proxy_decisions_total{{{sel}, decision="deny", reason="ledger_unavailable"}}"#),
                  "values": "0x10 12x30"},
                 {"series": format!("flowgate_ledger_prune_failures_total{{{sel}}}"),
                  "values": "0x10 1x30"}],
             "alert_rule_test": [
                 {"alertname": "FlowgateLedgerUnavailable", "eval_time": "14m", "exp_alerts": []},
                 {"alertname": "FlowgateLedgerUnavailable", "eval_time": "30m", "exp_alerts": []},
                 {"alertname": "FlowgateLedgerRetentionFailing", "eval_time": "14m", "exp_alerts": []},
                 {"alertname": "FlowgateLedgerRetentionFailing", "eval_time": "30m", "exp_alerts": []}]},
            // Flowise fails every forwarded prediction while retrying clients collect refusals
            // (429, chat_busy) fifty times as often: still every prediction Flowise saw failed.
            {"interval": "1m",
             "input_series": [
                 {"series": format!(r#"flowgate_upstream_errors_total{{{sel}, reason="status_5xx"}}"#),
                  "values": "0+20x40"},
                 {"series": format!(r#"flowgate_proxy_decisions_total{{{sel}, decision="allow", reason="granted"}}"#),
                  "values": "0+20x40"},
                 {"series": format!(r#"flowgate_proxy_requests_total{{{sel}, route="prediction", status="429"}}"#),
                  "values": "0+1000x40"}],
             "alert_rule_test": [flowise_alert]},
            {"interval": "1m",
             "input_series": [{"series": format!("flowgate_controller_leader{{{sel}}}"), "values": "1x40"}],
             "alert_rule_test": [{"alertname": "FlowgateDown", "eval_time": "30m", "exp_alerts": [{
                 "exp_labels": absent_labels, "exp_annotations": down["annotations"]}]}]},
        ],
    });
    std::fs::write(
        dir.path().join("tests.yaml"),
        serde_json::to_string(&unit_tests).expect("JSON is YAML"),
    )
    .expect("write tests");
    let (ok, out) = promtool(&["test", "rules", "tests.yaml"], dir.path());
    assert!(ok, "promtool test rules: {out}");
}

#[tokio::test]
async fn without_a_controller_there_is_no_leader_or_sync_alert() {
    let client = support::client().await;
    install_monitoring_crd(&client, "PrometheusRule").await;
    let ns = support::fresh_namespace(&client, "chart-alerts-proxy").await;
    let values = json!({
        "controller": {"enabled": false},
        "metrics": {"prometheusRule": {"enabled": true, "selector": r#"job="flowgate-proxy""#}},
    });
    let _release = install(&ns, &ns, &values).unwrap_or_else(|e| panic!("install: {e}"));
    let rules = monitoring_objects(&client, &ns, "PrometheusRule");
    let rule = rules
        .get(&format!("{ns}-flowgate"))
        .await
        .expect("PrometheusRule stored");
    let alerts = rule.data["spec"]["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!alerts.is_empty());
    for alert in &alerts {
        // No leader, and no periodic sync pass: an admin's one sync call would age forever.
        assert_ne!(alert["alert"], "FlowgateNoControllerLeader");
        assert_ne!(alert["alert"], "FlowgateFlowiseSyncFailing");
        assert_ne!(alert["alert"], "FlowgateControllerRestarted");
        let expr = alert["expr"].as_str().expect("expr");
        assert!(expr.contains(r#"job="flowgate-proxy""#), "{expr}");
        assert!(
            !expr.contains("namespace="),
            "the selector replaces the default: {expr}"
        );
    }
}
