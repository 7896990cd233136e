//! The real flowgate binary starting and stopping: SIGTERM draining an in-flight stream, a
//! prediction still running after the drain cut and refunded, a shutdown delay served out
//! unready, a second SIGTERM ending it at once, and requests before the index has loaded told
//! to try again.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use support::fake_flowise::{FakeFlowise, Mode};
use support::process::{
    eventually, predict, sigterm_until_unready, spawn, spawn_on, spawn_with, start,
};
use support::team::Team;

#[tokio::test]
async fn sigterm_drains_an_in_flight_stream() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let team = Team::with_fake_flowise("process-sigterm").await;
        let fake = FakeFlowise::start(Mode::Stream {
            tokens: 4,
            gap: Duration::from_millis(400),
        })
        .await;
        let mut gate = spawn(&fake.url, std::path::Path::new(&kubeconfig)).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/prediction/{id}", gate.base))
            .bearer_auth(&alice)
            .json(&json!({"question": "slow", "streaming": true}))
            .send()
            .await
            .expect("stream starts");
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut text =
            String::from_utf8_lossy(&body.next().await.expect("chunk").expect("chunk")).to_string();
        gate.child.sigterm();
        // While it drains, the ops listener still answers: unready, and its metrics.
        let ops = |path: &'static str| {
            let url = format!("{}{path}", gate.ops);
            async move {
                let answer = reqwest::get(url).await.expect("the ops listener answers");
                answer.status().as_u16()
            }
        };
        support::eventually(10, "unready while draining", || async {
            (ops("/readyz").await == 503).then_some(())
        })
        .await;
        assert_eq!(ops("/metrics").await, 200, "metrics scraped while draining");
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("stream not cut")));
        }
        assert!(text.contains("[DONE]"), "stream drained to its end: {text}");
        // The process exits by itself once drained.
        let status = gate.child.exited(20, "flowgate after SIGTERM").await;
        assert!(status.success(), "exit status {status}");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn sigterm_with_a_shutdown_delay_serves_on_unready_then_drains_and_exits() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let team = Team::with_fake_flowise("process-delay").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let delay = ("FLOWGATE_SHUTDOWN_DELAY", "5s");
        let kubeconfig = std::path::Path::new(&kubeconfig);
        let mut gate = spawn_with(&fake.url, kubeconfig, &[delay]).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        gate.child.sigterm();
        let signalled = tokio::time::Instant::now();
        let readyz = format!("{}/readyz", gate.ops);
        support::eventually(5, "/readyz answers 503 once signalled", || async {
            let resp = reqwest::get(&readyz).await.ok()?;
            (resp.status() == 503).then_some(resp.text().await.ok()?)
        })
        .await;
        // Out of the load balancers, still serving: a new connection is answered.
        assert_eq!(predict(&gate.base, &alice, &id).await, 200);
        assert!(
            gate.child.try_wait().expect("wait").is_none(),
            "still running"
        );

        let status = gate.child.exited(30, "flowgate after the delay").await;
        assert!(status.success(), "exit status {status}");
        assert!(
            signalled.elapsed() >= Duration::from_secs(5),
            "not before the delay"
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

/// Until its index has loaded, flowgate answers every request that needs it 503
/// `index_not_ready` (try again), not "no such chatflow" or "no access" as if for good: here the
/// API server accepts connections and never answers, so the index never loads.
#[tokio::test]
async fn before_the_index_has_loaded_requests_are_told_to_try_again() {
    flowgate::telemetry::install_crypto_provider();
    tokio::time::timeout(Duration::from_secs(60), async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = silent.local_addr().expect("address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: s, cluster: {{server: 'https://{server}', insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: s, user: {{token: x}}}}]\n\
                 contexts: [{{name: s, context: {{cluster: s, user: s}}}}]\ncurrent-context: s\n"
            ),
        )
        .expect("kubeconfig");
        let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let gate = start("http://127.0.0.1:9", &kubeconfig, &ledger, dir, None, &[]);
        let alice = support::gate::token("alice@example.com", json!({}));
        let base = gate.base.clone();
        let http = reqwest::Client::new();
        let answer = support::eventually(20, "the proxy answers", || async {
            let resp = http
                .get(format!("{base}/api/v1/chatflows"))
                .bearer_auth(&alice)
                .send()
                .await
                .ok()?;
            let retry = resp.headers().get("retry-after").cloned();
            Some((resp.status(), retry, resp.json::<serde_json::Value>().await.ok()?))
        })
        .await;
        assert_eq!(answer.0, 503, "{answer:?}");
        assert_eq!(answer.1.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(answer.2["error"]["code"], "index_not_ready", "{answer:?}");
        // Also the one route asked without credentials (the SDKs' streaming check): not 404.
        let streaming = http
            .get(format!("{base}/api/v1/chatflows-streaming/3f1c2a7e-0000-4000-8000-000000000001"))
            .send()
            .await
            .expect("flowgate answers");
        assert_eq!(streaming.status(), 503);
        let ready = reqwest::get(format!("{}/readyz", gate.ops))
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 503, "not ready either");
    })
    .await
    .expect("bounded to 60 s");
}

/// A second SIGTERM (an operator who does not want to wait) ends the process at once, however
/// long the shutdown would still take.
#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let team = Team::with_fake_flowise("process-twice").await;
        let fake = FakeFlowise::start(Mode::Answer { tokens: 0 }).await;
        let delay = ("FLOWGATE_SHUTDOWN_DELAY", "60s");
        let kubeconfig = std::path::Path::new(&kubeconfig);
        let mut gate = spawn_with(&fake.url, kubeconfig, &[delay]).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        eventually(&gate.base, &alice, &id, 200).await;

        sigterm_until_unready(&gate).await;
        gate.child.sigterm();
        let status = gate
            .child
            .exited(10, "flowgate after a second SIGTERM")
            .await;
        assert_eq!(status.code(), Some(143), "exit status {status}");
        team.cleanup().await;
    })
    .await
    .expect("bounded to 60 s");
}

#[tokio::test]
async fn a_prediction_the_drain_cuts_is_refunded_not_charged() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG set");
        let (team, policy) = Team::with_flat_policy("process-cut").await;
        // Flowise takes longer than the drain period (25 s).
        let fake = FakeFlowise::start(Mode::Slow {
            delay: Duration::from_secs(60),
        })
        .await;
        let kept = tempfile::tempdir().expect("ledger dir");
        let ledger = kept.path().join("ledger.db");
        let url = format!("sqlite://{}", ledger.display());
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = std::path::Path::new(&kubeconfig);
        let mut gate = spawn_on(&fake.url, kubeconfig, &url, dir).await;
        let (id, alice) = (team.flowise_id.clone(), team.alice());
        // Served once the policy is: a prediction now is charged.
        support::eventually(15, "the policy indexed", || {
            support::gate::credits_used(&gate.base, &alice, &policy)
        })
        .await;
        // A client that waits as long as it takes (`predict` gives up after 5 s).
        let asked = tokio::spawn(
            reqwest::Client::new()
                .post(format!("{}/api/v1/prediction/{id}", gate.base))
                .bearer_auth(&alice)
                .json(&json!({"question": "a long run"}))
                .send(),
        );
        support::eventually(15, "Flowise has the prediction", || async {
            (fake.predictions() == 1).then_some(())
        })
        .await;
        gate.child.sigterm();
        let status = gate.child.exited(60, "flowgate after the drain").await;
        assert!(status.success(), "exit status {status}");
        asked.abort();
        // The reservation was refunded: the cut was flowgate's, not the caller's hang-up.
        let ledger = flowgate::ledger::open(&flowgate::config::LedgerUrl::Sqlite(ledger))
            .await
            .expect("ledger opens");
        let filter = flowgate::ledger::UsageFilter {
            policy: Some(policy.clone()),
            ..Default::default()
        };
        let outcomes: Vec<String> = ledger
            .usage(filter)
            .await
            .expect("usage log")
            .iter()
            .map(|row| row.outcome.to_string())
            .collect();
        assert!(
            outcomes.contains(&"refunded".to_string()),
            "the cut prediction is refunded: {outcomes:?}"
        );
        team.cleanup().await;
    })
    .await
    .expect("bounded to 90 s");
}
