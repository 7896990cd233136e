//! Token-priced Agentflows, streamed and resumed: what each node's tokens cost.

use super::*;

#[tokio::test]
async fn a_streamed_agentflow_is_charged_every_node_even_when_it_fails_after_answering() {
    // Streaming, Flowise reports `usageMetadata` for the last LLM node only; the other nodes'
    // tokens are in the node list it sends after each node. The same Agentflow must cost the same
    // streamed as answered in JSON, and a node failing after the answer reached the caller does
    // not refund it.
    //
    // A node failing before any token, after earlier nodes' outputs reached the caller in the
    // node list, does not refund either: those nodes are charged. Only the Start node having
    // run is a failure before answering: refunded.
    let (team, policy) = token_priced("credits-agentflow").await;
    let id = team.flowise_id.clone();
    // Each prediction (the readiness probe streamed too) costs 2 + ceil(tokens * 10 / 1000).
    for (fail_after, cost) in [(None, 17), (Some(3), 17), (Some(2), 16), (Some(0), 0)] {
        let fake = FakeFlowise::start(Mode::Agentflow {
            nodes: [1000, 400, 100],
            fail_after,
        })
        .await;
        let gate = Flowgate::with_flowise(&fake.url).await;
        eventually_status(&gate, &team.alice(), &id, 200).await;
        let text = streamed(&gate, &team.alice(), &id).await;
        assert_eq!(
            text.contains("\"event\":\"error\""),
            fail_after.is_some(),
            "{text}"
        );
        assert_eq!(
            text.contains("\"event\":\"token\""),
            fail_after != Some(2) && fail_after != Some(0),
            "{text}"
        );
        let want = cost * i64::try_from(fake.predictions()).expect("count");
        used_becomes(&gate, &team.alice(), &policy, want).await;
    }
    team.cleanup().await;
}

/// A streamed Agentflow whose node lists flowgate cannot read (past what it reads of one, or
/// without body memory for them): the tokens of every node but the last are unknown, so the run
/// costs at least what it held (`reserveTokens`), as a JSON answer too large to read does —
/// not just the last node's tokens.
#[tokio::test]
async fn a_streamed_agentflow_whose_node_lists_go_unread_is_charged_at_least_its_hold() {
    let team = Team::with_fake_flowise("credits-unread-list").await;
    team.policy(
        "tokens",
        json!({"chatflows": ["support-bot"], "budget": {"credits": 100000, "period": "Daily"},
               "cost": {"perPrediction": 2, "perThousandTokens": 10, "reserveTokens": 50000}}),
    )
    .await;
    let policy = format!("{}/tokens", team.ns);
    let fake = FakeFlowise::start(Mode::Agentflow {
        nodes: [1000, 400, 100],
        fail_after: None,
    })
    .await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let (id, alice) = (team.flowise_id.clone(), team.alice());
    // The probes' lists are read: 2 + 15 each, though each held 2 + 500.
    eventually_status(&gate, &alice, &id, 200).await;
    let probes = i64::try_from(fake.predictions()).expect("count");
    used_becomes(&gate, &alice, &policy, 17 * probes).await;
    // Every node list repeats the question (the Start node's output): past what flowgate reads.
    let question = "x".repeat(flowgate::proxy::MAX_ANSWER);
    let text = reqwest::Client::new()
        .post(format!("{}/api/v1/prediction/{id}", gate.base))
        .bearer_auth(&alice)
        .json(&json!({"question": question, "streaming": true}))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("stream read");
    assert!(text.ends_with("\"[DONE]\"}\n\n"), "streamed to its end");
    // The last node's 100 tokens alone would be 2 + 1.
    used_becomes(&gate, &alice, &policy, 17 * probes + 502).await;
    team.cleanup().await;
}

#[tokio::test]
async fn a_resumed_agentflow_is_charged_only_for_its_own_nodes() {
    // Resuming after a Human Input node (`humanInput`), Flowise lists the nodes of the run it
    // resumes first: those were charged with that run.
    let (team, policy) = token_priced("credits-resume").await;
    let fake = FakeFlowise::start(Mode::Resumed {
        earlier: 5000,
        own: 300,
    })
    .await;
    let gate = Flowgate::with_flowise(&fake.url).await;
    let id = team.flowise_id.clone();
    // Not a resume (the readiness probe): every node listed counts, 2 + 53.
    eventually_status(&gate, &team.alice(), &id, 200).await;
    let probes = i64::try_from(fake.predictions()).expect("count");
    used_becomes(&gate, &team.alice(), &policy, 55 * probes).await;
    let resume =
        json!({"question": "yes", "humanInput": {"type": "proceed", "startNodeId": "human"}});
    let (status, _) = predict(&gate, &team.alice(), &id, resume).await;
    assert_eq!(status, 200);
    // The resume: only the node after the resumed one, 2 + 3.
    used_becomes(&gate, &team.alice(), &policy, 55 * probes + 5).await;
    team.cleanup().await;
}
