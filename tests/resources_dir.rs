//! `flowgate run --resources-dir`: no cluster, resources from YAML files (watched), chatflows
//! resolved against the real Flowise.

mod support;

use std::time::Duration;

use serde_json::json;

use support::gate::{
    Flowgate, Options, create_echo_chatflow, delete_chatflow, eventually_status, get_json, predict,
    token,
};

const ACCESS: &str = "apiVersion: flowgate.io/v1alpha1
kind: ChatflowAccess
metadata: {name: local-team}
spec:
  chatflows: [local-bot]
  subjects: [{user: dana@example.com}]
";

#[tokio::test]
async fn resources_from_files_are_enforced_and_edits_take_effect() {
    let name = format!("flowgate-files-{}", jiff::Timestamp::now().as_millisecond());
    let flowise_id = create_echo_chatflow(&name).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("chatflow.yaml"),
        format!("apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: local-bot}}\nspec: {{flowiseName: {name}}}\n---\n{ACCESS}"),
    )
    .expect("write");
    let gate = Flowgate::start_with(Options {
        resources_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let dana = token("dana", json!({"email": "dana@example.com"}));
    let body = eventually_status(&gate, &dana, &flowise_id, 200).await;
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Echo: ")),
        "{body}"
    );
    let (status, answer) =
        predict(&gate, &dana, &flowise_id, json!({"question": "from files"})).await;
    assert_eq!(
        (status, answer["text"].as_str()),
        (200, Some("Echo: from files"))
    );
    let stranger = token("eve", json!({"email": "eve@example.com"}));
    let (status, _) = predict(&gate, &stranger, &flowise_id, json!({"question": "x"})).await;
    assert_eq!(status, 403);

    // Removing the access document revokes it (the directory is polled every second).
    std::fs::write(
        dir.path().join("chatflow.yaml"),
        format!("apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: local-bot}}\nspec: {{flowiseName: {name}}}\n"),
    )
    .expect("rewrite");
    let body = eventually_status(&gate, &dana, &flowise_id, 403).await;
    assert_eq!(body["error"]["code"], "forbidden");

    // A broken file is reported and skipped; the rest keeps working.
    std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed").expect("write");
    std::fs::write(dir.path().join("access.yaml"), ACCESS).expect("write");
    tokio::time::timeout(
        Duration::from_secs(15),
        eventually_status(&gate, &dana, &flowise_id, 200),
    )
    .await
    .expect("access restored despite a broken file");

    // An invalid object is skipped, and counted where an alert can see it.
    let invalid = |kind: &str| format!("flowgate_index_invalid_resources{{kind=\"{kind}\"}}");
    assert_eq!(
        support::metric(&gate.ops, &invalid("CreditPolicy")).await,
        Some(0.0)
    );
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: local}\n\
         spec: {chatflows: [\"*\"], budget: {credits: 5, period: Daily, timeZone: Europe/Pariss}}\n",
    )
    .expect("write");
    support::eventually(15, "the invalid policy counted", || async {
        (support::metric(&gate.ops, &invalid("CreditPolicy")).await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        support::metric(&gate.ops, &invalid("ChatflowAccess")).await,
        Some(0.0)
    );
    // By default (FLOWGATE_INVALID_POLICIES=skip) it charges nothing: predictions go on.
    let (status, answer) = predict(&gate, &dana, &flowise_id, json!({"question": "free"})).await;
    assert_eq!(status, 200, "{answer}");
    delete_chatflow(&flowise_id).await;
}

/// `--resources-recursive`: a checkout laid out by team is served whole, and a grant added in a
/// new subdirectory takes effect as one in the directory does.
#[tokio::test]
async fn recursive_serves_the_subdirectories_and_their_edits() {
    let name = format!("flowgate-tree-{}", jiff::Timestamp::now().as_millisecond());
    let flowise_id = create_echo_chatflow(&name).await;
    let dir = tempfile::tempdir().expect("dir");
    let bots = dir.path().join("platform/chatflows");
    std::fs::create_dir_all(&bots).expect("mkdir");
    std::fs::write(
        bots.join("bot.yaml"),
        format!("apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: local-bot}}\nspec: {{flowiseName: {name}}}\n"),
    )
    .expect("write");
    let gate = Flowgate::start_with(Options {
        resources_dir: Some(dir.path().to_path_buf()),
        resources_recursive: true,
        ..Default::default()
    })
    .await;
    let dana = token("dana", json!({"email": "dana@example.com"}));
    // Served (found in its subdirectory), but no grant yet.
    let body = eventually_status(&gate, &dana, &flowise_id, 403).await;
    assert_eq!(body["error"]["code"], "forbidden");
    let team = dir.path().join("teams/local");
    std::fs::create_dir_all(&team).expect("mkdir");
    std::fs::write(team.join("access.yaml"), ACCESS).expect("write");
    let body = eventually_status(&gate, &dana, &flowise_id, 200).await;
    assert_eq!(
        body["text"].as_str().map(|t| t.starts_with("Echo: ")),
        Some(true),
        "{body}"
    );
    delete_chatflow(&flowise_id).await;
}

/// [`ACCESS`], also granting the group `interns`.
fn access_with_interns() -> String {
    ACCESS.replace(
        "subjects: [{user: dana@example.com}]",
        "subjects: [{user: dana@example.com}, {group: interns}]",
    )
}

#[tokio::test]
async fn with_invalid_policies_refused_an_invalid_policy_stops_what_it_would_charge() {
    let name = format!(
        "flowgate-refuse-{}",
        jiff::Timestamp::now().as_millisecond()
    );
    let flowise_id = create_echo_chatflow(&name).await;
    let dir = tempfile::tempdir().expect("dir");
    let policy = |time_zone: &str| {
        format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {{name: interns}}\n\
             spec: {{chatflows: [local-bot], subjects: [{{group: interns}}],\n\
             budget: {{credits: 1, period: Daily, timeZone: {time_zone}}}}}\n"
        )
    };
    std::fs::write(
        dir.path().join("chatflow.yaml"),
        format!("apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: local-bot}}\nspec: {{flowiseName: {name}}}\n---\n{}\n---\n{}", access_with_interns(), policy("Europe/Pariss")),
    )
    .expect("write");
    let gate = Flowgate::start_with(Options {
        resources_dir: Some(dir.path().to_path_buf()),
        invalid_policies: Some("refuse".into()),
        ..Default::default()
    })
    .await;
    let intern = token("ivan", json!({"groups": ["interns"]}));
    let body = eventually_status(&gate, &intern, &flowise_id, 503).await;
    assert_eq!(body["error"]["code"], "policy_invalid", "{body}");
    assert_eq!(body["error"]["policy"], "default/interns", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Europe/Pariss")),
        "the message says what is wrong: {body}"
    );
    // The policy names interns only: dana is not refused.
    let dana = token("dana", json!({"email": "dana@example.com"}));
    let (status, answer) = predict(&gate, &dana, &flowise_id, json!({"question": "hi"})).await;
    assert_eq!(status, 200, "{answer}");

    // Fixed, it charges: one credit a day, then 402.
    std::fs::write(
        dir.path().join("chatflow.yaml"),
        format!("apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: local-bot}}\nspec: {{flowiseName: {name}}}\n---\n{}\n---\n{}", access_with_interns(), policy("Europe/Paris")),
    )
    .expect("rewrite");
    eventually_status(&gate, &intern, &flowise_id, 200).await;
    let (status, answer) = predict(&gate, &intern, &flowise_id, json!({"question": "2"})).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (402, &json!("insufficient_credits")),
        "{answer}"
    );

    // A policy that does not even parse is counted, and refuses everything in its namespace,
    // on both prediction routes.
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {name: typo}\n\
         spec: {chatflows: [local-bot], budget: {credits: 5, period: Dialy}}\n",
    )
    .expect("write");
    let body = eventually_status(&gate, &dana, &flowise_id, 503).await;
    assert_eq!(
        (&body["error"]["code"], &body["error"]["policy"]),
        (&json!("policy_invalid"), &json!("default/typo")),
        "{body}"
    );
    let invalid = "flowgate_index_invalid_resources{kind=\"CreditPolicy\"}";
    assert_eq!(support::metric(&gate.ops, invalid).await, Some(1.0));
    let compat = reqwest::Client::new()
        .post(format!("{}/chat/predict", gate.base))
        .bearer_auth(&dana)
        .json(&json!({"chatflow_id": flowise_id, "question": "hi"}))
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(compat.status().as_u16(), 503);
    let answer: serde_json::Value = compat.json().await.expect("JSON error");
    assert_eq!(answer["error"]["code"], "policy_invalid", "{answer}");
    delete_chatflow(&flowise_id).await;
}

#[tokio::test]
async fn the_examples_directory_serves_the_same_decisions_without_a_cluster() {
    // examples/chatflow-support-bot.yaml adopts the Flowise chatflow named "Support Bot"
    // (scripts/dev.sh creates the same one); make sure exactly one exists.
    let (url, key) = support::gate::flowise_env();
    let list = get_json(&format!("{url}/api/v1/chatflows"), &key).await;
    let list = list.as_array().cloned().unwrap_or_default();
    let named: Vec<String> = list
        .iter()
        .filter(|c| c["name"] == "Support Bot")
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    let support_bot = match named.as_slice() {
        [one] => one.clone(),
        [] => create_echo_chatflow("Support Bot").await,
        many => panic!(
            "{} Flowise chatflows are named 'Support Bot'; the example needs one",
            many.len()
        ),
    };
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let gate = Flowgate::start_with(Options {
        resources_dir: Some(examples),
        ..Default::default()
    })
    .await;
    let alice = token("alice", json!({"email": "alice@example.com"}));
    let body = eventually_status(&gate, &alice, &support_bot, 200).await;
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Echo: ")),
        "{body}"
    );
    let by_group = token("sam", json!({"groups": ["support"]}));
    let (status, _) = predict(&gate, &by_group, &support_bot, json!({"question": "x"})).await;
    assert_eq!(status, 200, "the support group is granted too");
    let bob = token("bob", json!({"email": "bob@example.com"}));
    let (status, _) = predict(&gate, &bob, &support_bot, json!({"question": "x"})).await;
    assert_eq!(status, 403);
    let listed: serde_json::Value =
        get_json(&format!("{}/api/v1/chatflows", gate.base), &alice).await;
    let ids: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![support_bot.as_str()],
        "faq-bot owns a definition: not served without the controller"
    );
}

/// `/chat/predict` and `/chatflows/{id}` take a Flowise id or a Chatflow's name; a string
/// shaped like a Flowise id (a UUID) is only ever an id: a Chatflow named like one, in any
/// namespace, never receives what was sent to that id.
#[tokio::test]
async fn a_name_shaped_like_a_flowise_id_is_never_looked_up_by_name() {
    let stamp = jiff::Timestamp::now().as_millisecond();
    let (by_uuid, by_name) = (
        format!("flowgate-uuid-{stamp}"),
        format!("flowgate-named-{stamp}"),
    );
    let (uuid_id, named_id) = (
        create_echo_chatflow(&by_uuid).await,
        create_echo_chatflow(&by_name).await,
    );
    let lookalike = "3f1c2a7e-0000-4000-8000-000000000001";
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("chatflows.yaml"),
        format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: {lookalike}}}\n\
             spec: {{flowiseName: {by_uuid}}}\n---\n\
             apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: \"0123456789abcdef0123456789abcdef\"}}\n\
             spec: {{flowiseName: {by_name}}}\n---\n\
             apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {{name: both}}\n\
             spec: {{chatflows: [{lookalike}, \"0123456789abcdef0123456789abcdef\"], subjects: [{{user: dana@example.com}}]}}\n"
        ),
    )
    .expect("write");
    let gate = Flowgate::start_with(Options {
        resources_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let dana = token("dana", json!({"email": "dana@example.com"}));
    eventually_status(&gate, &dana, &uuid_id, 200).await;
    eventually_status(&gate, &dana, &named_id, 200).await;
    let compat = async |chatflow: &str| {
        let answer = reqwest::Client::new()
            .post(format!("{}/chat/predict", gate.base))
            .bearer_auth(&dana)
            .json(&json!({"chatflow_id": chatflow, "question": "hi"}))
            .send()
            .await
            .expect("flowgate answers");
        let status = answer.status().as_u16();
        (
            status,
            answer.json::<serde_json::Value>().await.expect("JSON"),
        )
    };
    let (status, answer) = compat("0123456789abcdef0123456789abcdef").await;
    assert_eq!(
        status, 200,
        "a name is looked up, 32 hex digits too: {answer}"
    );
    let (status, answer) = compat(&uuid_id).await;
    assert_eq!(status, 200, "an id is: {answer}");
    let (status, answer) = compat(lookalike).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("chatflow_not_found")),
        "{answer}"
    );
    let listed = reqwest::Client::new()
        .get(format!("{}/chatflows/{lookalike}", gate.base))
        .bearer_auth(&dana)
        .send()
        .await
        .expect("flowgate answers");
    assert_eq!(listed.status().as_u16(), 404);
    delete_chatflow(&uuid_id).await;
    delete_chatflow(&named_id).await;
}
