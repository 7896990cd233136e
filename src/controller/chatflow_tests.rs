//! The Chatflow steps without I/O (and `sync` against the in-memory Flowise).

use serde_json::json;

use super::*;

pub(super) const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn at(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + secs).expect("valid time")
}

fn chatflow(spec: serde_json::Value) -> Chatflow {
    serde_json::from_value(json!({
        "apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
        "metadata": {"name": "support-bot", "namespace": "team-a", "generation": 3},
        "spec": spec,
    }))
    .expect("valid Chatflow")
}

fn flow() -> serde_json::Value {
    json!({"nodes": [{"id": "a", "data": {"x": 1, "y": 2}}], "edges": []})
}

pub(super) fn owned() -> Owned {
    match validate(&chatflow(
        json!({"definition": {"type": "AGENTFLOW", "flowData": flow()}}),
    )) {
        Ok(Desired::Own(owned)) => owned,
        other => panic!("expected an owned definition, got {other:?}"),
    }
}

pub(super) fn in_flowise(id: &str, name: &str, category: Option<&str>) -> FlowiseChatflow {
    FlowiseChatflow {
        id: id.into(),
        name: name.into(),
        flow_type: "AGENTFLOW".into(),
        flow_data: flow().to_string(),
        deployed: Some(false),
        is_public: None,
        apikeyid: None,
        category: category.map(str::to_string),
        created_date: None,
        updated_date: None,
    }
}

/// The status of a first comparison that found `chatflow`, at generation 3.
pub(super) fn first_synced(chatflow: FlowiseChatflow) -> ChatflowStatus {
    next_status(
        &ChatflowStatus::default(),
        &synced(chatflow),
        Some(3),
        false,
        at(0),
        HOUR,
    )
}

pub(super) fn synced(chatflow: FlowiseChatflow) -> Outcome {
    Outcome::Synced {
        chatflow,
        change: Change::None,
    }
}

pub(super) fn ready(status: &ChatflowStatus) -> (String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .expect("Ready condition");
    (c.status.clone(), c.reason.clone())
}

// validate

#[test]
fn a_spec_with_two_sources_is_invalid_and_says_so() {
    let cf = chatflow(json!({"flowiseId": "3f1c2a7e-0000-4000-8000-000000000001",
                             "definition": {"flowData": flow()}}));
    let message = validate(&cf).expect_err("invalid");
    assert!(
        message.contains("exactly one of flowiseId, flowiseName, definition"),
        "{message}"
    );
}

#[test]
fn a_definition_without_nodes_is_invalid_before_flowise_sees_it() {
    let cf = chatflow(json!({"definition": {"flowData": {"edges": []}}}));
    let message = validate(&cf).expect_err("invalid");
    assert!(message.contains("an array 'nodes'"), "{message}");
}

#[test]
fn a_definition_whose_nodes_or_edges_flowise_cannot_save_is_invalid() {
    for (flow, says) in [
        (
            json!({"nodes": [{}], "edges": []}),
            "nodes[0] must be an object",
        ),
        (
            json!({"nodes": [{"id": "a", "data": {}}, "x"], "edges": []}),
            "nodes[1]",
        ),
        (
            json!({"nodes": [{"id": 1, "data": {}}], "edges": []}),
            "nodes[0]",
        ),
        (
            json!({"nodes": [{"id": "a", "data": null}], "edges": []}),
            "nodes[0]",
        ),
        (
            json!({"nodes": [], "edges": [null]}),
            "edges[0] must be an object",
        ),
    ] {
        let cf = chatflow(json!({"definition": {"flowData": flow}}));
        let message = validate(&cf).expect_err("invalid");
        assert!(message.contains(says), "{flow}: {message}");
    }
    let cf = chatflow(json!({"definition": {"flowData": flow()}}));
    assert!(validate(&cf).is_ok());
}

#[test]
fn an_owned_definition_defaults_its_name_and_carries_its_marker() {
    let owned = owned();
    assert_eq!(owned.name, "support-bot");
    assert_eq!(owned.marker, "flowgate:team-a/support-bot");
    assert_eq!(owned.flow_type, ChatflowType::Agentflow);
}

#[test]
fn an_adopted_id_is_lower_cased() {
    let cf = chatflow(json!({"flowiseId": "3F1C2A7E-0000-4000-8000-00000000000A"}));
    assert_eq!(
        validate(&cf),
        Ok(Desired::AdoptId(
            "3f1c2a7e-0000-4000-8000-00000000000a".into()
        ))
    );
}

// plan

#[test]
fn nothing_found_creates_with_the_marker() {
    let owned = owned();
    let plan = plan(
        &Desired::Own(owned.clone()),
        Found::None {
            name_taken_by: vec![],
        },
    );
    let Plan::Create(body) = plan else {
        panic!("expected Create, got {plan:?}")
    };
    assert_eq!(body.name.as_deref(), Some("support-bot"));
    assert_eq!(body.flow_type.as_deref(), Some("AGENTFLOW"));
    assert_eq!(
        body.category.as_deref(),
        Some("flowgate:team-a/support-bot")
    );
    assert_eq!(body.deployed, Some(false));
    let sent: serde_json::Value =
        serde_json::from_str(body.flow_data.as_deref().expect("flowData")).expect("a JSON string");
    assert_eq!(sent, flow());
}

#[test]
fn an_unmarked_chatflow_of_the_same_name_is_a_conflict_not_a_second_chatflow() {
    let plan = plan(
        &Desired::Own(owned()),
        Found::None {
            name_taken_by: vec![
                ("id-1".into(), None),
                ("id-2".into(), Some("team-b/support-bot".into())),
            ],
        },
    );
    assert!(
        matches!(&plan, Plan::FlowiseConflict(m) if m.contains("id-1, not created by flowgate")
            && m.contains("id-2, created for Chatflow team-b/support-bot")),
        "{plan:?}"
    );
}

#[test]
fn an_unchanged_chatflow_is_kept_whatever_the_key_order_of_its_flow_data() {
    let mut current = in_flowise("id-1", "support-bot", Some("flowgate:team-a/support-bot"));
    current.flow_data =
        r#"{ "edges": [], "nodes": [{"data": {"y": 2, "x": 1}, "id": "a"}] }"#.into();
    assert_eq!(
        plan(&Desired::Own(owned()), Found::One(current.clone())),
        Plan::Keep(current)
    );
}

#[test]
fn a_changed_definition_sends_only_what_differs() {
    let mut owned = owned();
    owned.flow_data["nodes"][0]["data"]["x"] = json!(5);
    owned.deployed = Some(true);
    let current = in_flowise("id-1", "support-bot", Some("flowgate:team-a/support-bot"));
    let Plan::Update(target, changes) = plan(&Desired::Own(owned), Found::One(current)) else {
        panic!("expected Update")
    };
    assert_eq!(target.id, "id-1");
    assert_eq!(changes.fields(), "flowData, deployed");
}

#[test]
fn a_lost_marker_is_put_back_next_to_other_tags() {
    let current = in_flowise("id-1", "support-bot", Some("sales; demo"));
    let changes = changes(&owned(), &current);
    assert_eq!(
        changes.category.as_deref(),
        Some("sales;demo;flowgate:team-a/support-bot")
    );
    assert_eq!(changes.fields(), "category");
}

#[test]
fn several_chatflows_of_an_adopted_name_are_a_conflict() {
    let plan = plan(
        &Desired::AdoptName("Support Bot".into()),
        Found::Many(vec!["a".into(), "b".into()]),
    );
    assert!(
        matches!(&plan, Plan::FlowiseConflict(m) if m.contains("a, b")),
        "{plan:?}"
    );
}

#[test]
fn an_unknown_id_is_not_found() {
    let plan = plan(
        &Desired::AdoptId("x".into()),
        Found::None {
            name_taken_by: vec![],
        },
    );
    assert!(matches!(plan, Plan::NotFound(_)));
}

#[test]
fn an_adopted_chatflow_is_never_changed() {
    let current = in_flowise("id-1", "Other", None);
    assert_eq!(
        plan(
            &Desired::AdoptName("Other".into()),
            Found::One(current.clone())
        ),
        Plan::Keep(current)
    );
}

// next_status

#[test]
fn a_synced_chatflow_reports_what_flowise_holds() {
    let mut chatflow = in_flowise("id-1", "Support Bot", None);
    chatflow.apikeyid = Some("key-id".into());
    let status = first_synced(chatflow);
    assert_eq!(status.flowise_id.as_deref(), Some("id-1"));
    assert_eq!(status.flowise_name.as_deref(), Some("Support Bot"));
    assert_eq!(status.flow_type.as_deref(), Some("AGENTFLOW"));
    assert_eq!(status.deployed, Some(false));
    assert_eq!(status.api_key_bound, Some(true));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(status.last_sync_time, Some(Time(at(0))));
    assert_eq!(ready(&status), ("True".into(), "Synced".into()));
}

#[test]
fn a_shared_chatflow_is_a_conflict_that_stays_put_across_resyncs() {
    let chatflow = in_flowise("id-1", "Support Bot", None);
    let synced_status = first_synced(chatflow.clone());
    let shared = Outcome::Shared {
        chatflow,
        change: Change::None,
        holder: None,
        others: vec!["team-b/bot".into()],
    };
    let first = next_status(&synced_status, &shared, Some(3), false, at(10), HOUR);
    assert_eq!(ready(&first), ("False".into(), "Conflict".into()));
    assert_eq!(
        first.flowise_id.as_deref(),
        Some("id-1"),
        "the claim stays recorded"
    );
    let message = &first.conditions[0].message;
    assert!(
        message.contains("id-1") && message.contains("team-b/bot"),
        "{message}"
    );
    // Resyncs of the same conflict write nothing: no status loop between the claimants.
    let again = next_status(&first, &shared, Some(3), false, at(70), HOUR);
    assert_eq!(again, first);
    assert_eq!(
        notable(&first, &again, &shared),
        None,
        "and publish no Event"
    );
}

#[test]
fn a_holder_keeps_its_chatflow_while_flowise_is_ambiguous_about_it() {
    // A second Flowise chatflow of its adopted name, say: a problem of what Flowise holds, not
    // a claim of another Chatflow's. What this one held stays held, and no rival takes it.
    let found = in_flowise("id-1", "Support Bot", None);
    let synced_status = first_synced(found);
    let ambiguous =
        Outcome::FlowiseConflict("several Flowise chatflows are named 'Support Bot'".into());
    let status = next_status(&synced_status, &ambiguous, Some(3), false, at(10), HOUR);
    assert_eq!(ready(&status), ("False".into(), "FlowiseConflict".into()));
    let mut cf = chatflow(json!({"flowiseName": "Support Bot"}));
    cf.status = Some(status);
    assert!(crate::index::rules::holds(&cf, "id-1"), "{:?}", cf.status);
    assert_eq!(
        crate::index::rules::claimed_flowise_id(&cf).as_deref(),
        Some("id-1")
    );
}

#[test]
fn a_claim_in_conflict_stays_in_conflict_until_flowise_is_compared_again() {
    // A claim that does not hold its chatflow must not come to hold it (`holds` reads Ready's
    // reason) by being suspended, made invalid, or reconciled while Flowise is away.
    let chatflow = in_flowise("id-1", "Support Bot", None);
    let shared = Outcome::Shared {
        chatflow: chatflow.clone(),
        change: Change::None,
        holder: Some("team-a/bot".into()),
        others: vec!["team-a/bot".into()],
    };
    let conflict = next_status(
        &ChatflowStatus::default(),
        &shared,
        Some(3),
        false,
        at(0),
        HOUR,
    );
    assert_eq!(ready(&conflict), ("False".into(), "Conflict".into()));

    let suspended = next_status(&conflict, &shared, Some(4), true, at(10), HOUR);
    assert_eq!(ready(&suspended), ("False".into(), "Conflict".into()));
    let down = Outcome::Unreachable("connection refused".into());
    let away = next_status(&conflict, &down, Some(4), false, at(10), HOUR);
    assert_eq!(ready(&away), ("False".into(), "Conflict".into()));
    assert_eq!(away.conditions[0].message, conflict.conditions[0].message);
    let away_suspended = next_status(&conflict, &down, Some(4), true, at(10), HOUR);
    assert_eq!(ready(&away_suspended), ("False".into(), "Conflict".into()));
    let invalid = Outcome::Invalid("flowData has no nodes".into());
    let broken = next_status(&conflict, &invalid, Some(4), false, at(10), HOUR);
    assert_eq!(ready(&broken), ("False".into(), "Conflict".into()));
    let message = &broken.conditions[0].message;
    assert!(
        message.contains("flowData has no nodes") && message.contains("id-1"),
        "{message}"
    );
    let again = next_status(&broken, &invalid, Some(4), false, at(20), HOUR);
    assert_eq!(
        again.conditions[0].message, *message,
        "no message grows on resync"
    );
    let ambiguous = Outcome::FlowiseConflict("several Flowise chatflows are named 'x'".into());
    let still = next_status(&conflict, &ambiguous, Some(4), false, at(10), HOUR);
    assert_eq!(ready(&still), ("False".into(), "Conflict".into()));
    // The holder renamed the chatflow: the name this claim adopts is gone. Its status no
    // longer records the holder's chatflow, which it would otherwise count as holding.
    let renamed = Outcome::NotFound("Flowise has no chatflow named 'Support Bot'".into());
    let lost = next_status(&conflict, &renamed, Some(3), false, at(10), HOUR);
    assert_eq!(ready(&lost), ("False".into(), "NotFoundInFlowise".into()));
    assert_eq!((lost.flowise_id, lost.flowise_name), (None, None));
    // A holder whose chatflow is not found keeps its claim (Flowise may list it again).
    let holder = first_synced(chatflow.clone());
    let held = next_status(&holder, &renamed, Some(3), false, at(10), HOUR);
    assert_eq!(held.flowise_id.as_deref(), Some("id-1"));

    // Only a comparison decides: once this claim is the only one, it is Synced.
    let alone = next_status(&broken, &synced(chatflow), Some(5), false, at(30), HOUR);
    assert_eq!(ready(&alone), ("True".into(), "Synced".into()));
    // A holder (not in Conflict) that Flowise cannot reach keeps its state as before.
    let away = next_status(&alone, &down, Some(5), false, at(40), HOUR);
    assert_eq!(ready(&away), ("True".into(), "FlowiseUnreachable".into()));
}

#[test]
fn a_resync_that_finds_nothing_new_leaves_the_status_identical() {
    let outcome = synced(in_flowise("id-1", "Support Bot", None));
    let first = next_status(
        &ChatflowStatus::default(),
        &outcome,
        Some(3),
        false,
        at(0),
        HOUR,
    );
    let again = next_status(&first, &outcome, Some(3), false, at(60), HOUR);
    assert_eq!(
        again, first,
        "no write: lastSyncTime waits for a change or the refresh bound"
    );
    let later = next_status(&first, &outcome, Some(3), false, at(3600), HOUR);
    assert_eq!(
        later.last_sync_time,
        Some(Time(at(3600))),
        "refreshed once stale"
    );
}

#[test]
fn any_other_change_moves_last_sync_time_at_once() {
    let first = first_synced(in_flowise("id-1", "Support Bot", None));
    let mut deployed = in_flowise("id-1", "Support Bot", None);
    deployed.deployed = Some(true);
    let next = next_status(&first, &synced(deployed), Some(3), false, at(60), HOUR);
    assert_eq!(next.deployed, Some(true));
    assert_eq!(next.last_sync_time, Some(Time(at(60))));
}

#[test]
fn flowise_away_compares_no_spec_so_a_claim_pointed_back_meanwhile_holds_nothing() {
    // Held id-1 at generation 3; pointed elsewhere (not found) at 4; pointed back at 5 while
    // Flowise is away. Ready's observedGeneration stays the last compared spec's, so `holds`
    // does not count generation 5 as holding id-1, which another may have taken meanwhile.
    let held = first_synced(in_flowise("id-1", "Support Bot", None));
    let elsewhere = Outcome::NotFound("Flowise has no chatflow with id id-2".into());
    let away_from_it = next_status(&held, &elsewhere, Some(4), false, at(10), HOUR);
    assert_eq!(away_from_it.conditions[0].observed_generation, Some(4));
    let down = Outcome::Unreachable("refused".into());
    let back = next_status(&away_from_it, &down, Some(5), false, at(20), HOUR);
    assert_eq!(
        back.flowise_id.as_deref(),
        Some("id-1"),
        "the last known id"
    );
    assert_eq!(
        back.conditions[0].observed_generation,
        Some(4),
        "generation 5 was never compared"
    );
    // A holder whose spec did not change keeps holding while Flowise is away.
    let away = next_status(&held, &down, Some(3), false, at(30), HOUR);
    assert_eq!(away.conditions[0].observed_generation, Some(3));
}

#[test]
fn flowise_down_keeps_the_last_known_fields_and_says_unreachable() {
    let good = first_synced(in_flowise("id-1", "Support Bot", None));
    let down = Outcome::Unreachable("cannot connect".into());
    let bad = next_status(&good, &down, Some(3), false, at(60), HOUR);
    assert_eq!(bad.flowise_id.as_deref(), Some("id-1"));
    assert_eq!(bad.last_sync_time, good.last_sync_time);
    assert_eq!(
        ready(&bad),
        ("True".into(), "FlowiseUnreachable".into()),
        "served as it was"
    );
    let still = next_status(&bad, &down, Some(3), false, at(120), HOUR);
    assert_eq!(still, bad, "a second failed attempt writes nothing");
    // A chatflow that was not Ready stays refused.
    let missing = Outcome::NotFound("no such chatflow".into());
    let gone = next_status(&good, &missing, Some(3), false, at(60), HOUR);
    let gone_down = next_status(&gone, &down, Some(3), false, at(120), HOUR);
    assert_eq!(
        ready(&gone_down),
        ("False".into(), "FlowiseUnreachable".into())
    );
    // Nor is a spec edited during the outage (what it names was never checked).
    let edited = next_status(&good, &down, Some(4), false, at(60), HOUR);
    assert_eq!(
        ready(&edited),
        ("False".into(), "FlowiseUnreachable".into())
    );
}

#[test]
fn a_suspended_chatflow_is_not_ready_but_keeps_syncing() {
    let status = next_status(
        &ChatflowStatus::default(),
        &synced(in_flowise("id-1", "Support Bot", None)),
        Some(3),
        true,
        at(0),
        HOUR,
    );
    assert_eq!(status.flowise_id.as_deref(), Some("id-1"));
    assert_eq!(ready(&status), ("False".into(), "Suspended".into()));
}

// notable

#[test]
fn events_mark_creation_adoption_and_new_problems_only() {
    let chatflow = in_flowise("id-1", "Support Bot", None);
    let created = Outcome::Synced {
        chatflow: chatflow.clone(),
        change: Change::Created,
    };
    let empty = ChatflowStatus::default();
    let ok = next_status(&empty, &created, Some(1), false, at(0), HOUR);
    assert_eq!(notable(&empty, &ok, &created).map(|e| e.1), Some("Created"));
    assert_eq!(
        notable(&empty, &ok, &synced(chatflow.clone())).map(|e| e.1),
        Some("Adopted")
    );
    assert_eq!(
        notable(&ok, &ok, &synced(chatflow)),
        None,
        "a resync is not news"
    );

    let down = Outcome::Unreachable("refused".into());
    let bad = next_status(&ok, &down, Some(1), false, at(1), HOUR);
    let event = notable(&ok, &bad, &down).expect("a new problem is news");
    assert!(matches!(event.0, EventType::Warning));
    assert_eq!(event.1, "FlowiseUnreachable");
    assert_eq!(
        notable(&bad, &bad, &down),
        None,
        "the same problem again is not"
    );
}

// sync against the in-memory Flowise
