//! Chatflow: adoption, owned definitions, restarts and lost status writes, invalid specs.

use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;
use crate::support;
use flowgate::crd::Chatflow;
use flowgate::flowise::FlowiseApi;

#[tokio::test]
async fn adopting_by_id_and_by_name_reports_what_flowise_holds() {
    let (client, ns, api, _objects) = setup("cf-adopt").await;
    let name = support::unique("fgtest-adopt");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let other_name = support::unique("fgtest-adopt-name");
    let _cleanup_other = support::FlowiseCleanup(other_name.clone());
    let named = flowise_chatflow(&other_name, None).await;
    let controller = start(&client, settings(&ns));

    create(
        &api,
        chatflow_doc("by-id", json!({"flowiseId": existing.id})),
    )
    .await;
    create(
        &api,
        chatflow_doc("by-name", json!({"flowiseName": other_name})),
    )
    .await;
    for (object, want) in [("by-id", &existing), ("by-name", &named)] {
        let cf = wait_ready(&api, object, "True", "Synced").await;
        let status = cf.status.expect("status");
        assert_eq!(status.flowise_id.as_deref(), Some(want.id.as_str()));
        assert_eq!(status.flowise_name.as_deref(), Some(want.name.as_str()));
        assert_eq!(status.flow_type.as_deref(), Some("AGENTFLOW"));
        assert_eq!(status.deployed, Some(true));
        assert_eq!(status.api_key_bound, Some(false));
        assert_eq!(status.observed_generation, Some(1));
        assert!(status.last_sync_time.is_some());
        assert!(
            cf.metadata.finalizers.is_none(),
            "adopted chatflows need no finalizer"
        );
    }
    wait_for_event(&client, &ns, "by-id", "Adopted").await;

    let table = support::kubectl(&["get", "cf", "-n", &ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "FLOWISE-ID", "TYPE", "DEPLOYED", "READY", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("by-id"))
        .expect("a row for by-id")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        ["by-id", existing.id.as_str(), "AGENTFLOW", "true", "True"]
    );
    controller.stop().await;
}

#[tokio::test]
async fn an_ambiguous_name_is_a_conflict_and_unknown_ones_are_not_found() {
    let (client, ns, api, _objects) = setup("cf-conflict").await;
    let name = support::unique("fgtest-twice");
    let _cleanup = support::FlowiseCleanup(name.clone());
    flowise_chatflow(&name, None).await;
    flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));

    create(&api, chatflow_doc("twice", json!({"flowiseName": name}))).await;
    create(
        &api,
        chatflow_doc(
            "no-id",
            json!({"flowiseId": "3f1c2a7e-1111-4222-8333-444455556666"}),
        ),
    )
    .await;
    create(
        &api,
        chatflow_doc("no-name", json!({"flowiseName": format!("{name}-missing")})),
    )
    .await;

    wait_ready(&api, "twice", "False", "FlowiseConflict").await;
    wait_ready(&api, "no-id", "False", "NotFoundInFlowise").await;
    wait_ready(&api, "no-name", "False", "NotFoundInFlowise").await;
    wait_for_event(&client, &ns, "twice", "FlowiseConflict").await;
    controller.stop().await;
}

/// The Ready condition's message of `cf`.
fn ready_message(cf: &Chatflow) -> String {
    cf.status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_flowise_chatflow_claimed_twice_stays_with_its_holder() {
    // The Chatflow that holds a Flowise chatflow keeps it; a later claim is a Conflict naming it,
    // also when it comes from an older object edited to name the id (no takeover, and no way
    // to take the chatflow offline). Claims no one holds are served none until one remains.
    let (client, ns, api, _objects) = setup("cf-shared").await;
    let name = support::unique("fgtest-shared");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));

    // Older than the holder, pointing elsewhere for now.
    create(
        &api,
        chatflow_doc("older", json!({"flowiseName": format!("{name}-nowhere")})),
    )
    .await;
    wait_ready(&api, "older", "False", "NotFoundInFlowise").await;
    create(
        &api,
        chatflow_doc("holder", json!({"flowiseId": existing.id})),
    )
    .await;
    wait_ready(&api, "holder", "True", "Synced").await;

    let takeover = json!({"spec": {"flowiseName": null, "flowiseId": existing.id}});
    api.patch("older", &PatchParams::default(), &Patch::Merge(&takeover))
        .await
        .expect("patched");
    let older = wait_ready(&api, "older", "False", "Conflict").await;
    let message = ready_message(&older);
    assert!(
        message.contains(&existing.id) && message.contains(&format!("held by {ns}/holder")),
        "{message}"
    );
    create(&api, chatflow_doc("later", json!({"flowiseName": name}))).await;
    wait_ready(&api, "later", "False", "Conflict").await;
    // Let the reconciles these status writes triggered run: the holder stays Ready.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    wait_ready(&api, "holder", "True", "Synced").await;

    // The holder goes: the two claims left hold nothing, and neither is served.
    api.delete("holder", &DeleteParams::default())
        .await
        .expect("deleted");
    for object in ["older", "later"] {
        support::eventually(30, "no one holds it", || async {
            let cf = api.get(object).await.ok()?;
            ready_message(&cf).contains("none of them").then_some(())
        })
        .await;
    }
    // One of them points elsewhere: the other is the only claim, and Ready at once.
    let elsewhere = json!({"spec": {"flowiseId": null, "flowiseName": format!("{name}-nowhere")}});
    api.patch("older", &PatchParams::default(), &Patch::Merge(&elsewhere))
        .await
        .expect("patched");
    wait_ready(&api, "older", "False", "NotFoundInFlowise").await;
    wait_ready(&api, "later", "True", "Synced").await;
    controller.stop().await;
}

/// A Chatflow whose spec turns invalid (a mistake the schema lets through: both `flowiseId`
/// and `flowiseName`) still claims what it names: a holder keeps its Flowise chatflow from a
/// rival meanwhile, and one that held it before (its status still names it) is in Conflict
/// with the holder rather than holding it again.
#[tokio::test]
async fn an_invalid_spec_neither_gives_up_nor_takes_a_flowise_chatflow() {
    let (client, ns, api, _objects) = setup("cf-invalid-claim").await;
    let name = support::unique("fgtest-invalid-claim");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));
    let patch = |object: &'static str, spec: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                object,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
            .expect("patched");
        }
    };
    let state = |cf: &Chatflow| ready(cf).map(|(_, reason)| reason);

    // "former" holds it, then points at a name Flowise does not have: its status still names
    // the chatflow, which "holder" then takes.
    create(
        &api,
        chatflow_doc("former", json!({"flowiseId": existing.id})),
    )
    .await;
    wait_ready(&api, "former", "True", "Synced").await;
    patch(
        "former",
        json!({"flowiseId": null, "flowiseName": format!("{name}-nowhere")}),
    )
    .await;
    wait_ready(&api, "former", "False", "NotFoundInFlowise").await;
    create(
        &api,
        chatflow_doc("holder", json!({"flowiseId": existing.id})),
    )
    .await;
    wait_ready(&api, "holder", "True", "Synced").await;

    // "former" names it again, in an invalid spec: in Conflict, not holding it.
    patch(
        "former",
        json!({"flowiseId": existing.id, "flowiseName": name}),
    )
    .await;
    let former = compared(&api, "former").await;
    assert_eq!(state(&former).as_deref(), Some("Conflict"), "{former:?}");
    assert!(ready_message(&former).contains(&format!("held by {ns}/holder")));

    // The holder's spec turns invalid: the rival does not come to hold it.
    patch("holder", json!({"flowiseName": name})).await;
    let holder = compared(&api, "holder").await;
    assert_eq!(state(&holder).as_deref(), Some("InvalidSpec"), "{holder:?}");
    patch("former", json!({"flowiseName": null})).await;
    let former = compared(&api, "former").await;
    assert_eq!(state(&former).as_deref(), Some("Conflict"), "{former:?}");

    // Fixed, the holder is Synced again; the rival stays in Conflict.
    patch("holder", json!({"flowiseName": null})).await;
    wait_ready(&api, "holder", "True", "Synced").await;
    let former = compared(&api, "former").await;
    assert_eq!(state(&former).as_deref(), Some("Conflict"), "{former:?}");
    controller.stop().await;
}

/// Waits until the controller has written `name`'s status for its current spec.
async fn compared(api: &kube::Api<Chatflow>, name: &str) -> Chatflow {
    wait_until(
        api,
        name,
        30,
        "status of the current spec",
        |cf: &Chatflow| {
            let status = cf.status.as_ref();
            status.and_then(|s| s.observed_generation) == cf.metadata.generation
                && status.is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.observed_generation == cf.metadata.generation
                    })
                })
        },
    )
    .await
}

#[tokio::test]
async fn a_claim_in_conflict_never_comes_to_hold_and_a_new_leader_sees_claims_end() {
    // A rival suspended and resumed stays in Conflict (suspension once replaced Conflict, and
    // a status without Conflict holds the chatflow). A new leader still reconciles the rival
    // at once when the holder goes (the claims of its first listing were not recorded).
    let (client, ns, api, _objects) = setup("cf-rival").await;
    let name = support::unique("fgtest-rival");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let existing = flowise_chatflow(&name, None).await;
    let controller = start(&client, settings(&ns));
    create(
        &api,
        chatflow_doc("holder", json!({"flowiseId": existing.id})),
    )
    .await;
    wait_ready(&api, "holder", "True", "Synced").await;
    create(
        &api,
        chatflow_doc("rival", json!({"flowiseId": existing.id})),
    )
    .await;
    wait_ready(&api, "rival", "False", "Conflict").await;

    for suspended in [true, false] {
        let patch = json!({"spec": {"suspended": suspended}});
        api.patch("rival", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patched");
        let rival = compared(&api, "rival").await;
        assert_eq!(
            ready(&rival),
            Some(("False".into(), "Conflict".into())),
            "suspended: {suspended}"
        );
    }
    // Let the reconciles these status writes triggered run: the holder stays Ready.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    wait_ready(&api, "holder", "True", "Synced").await;
    assert_eq!(
        ready(&api.get("rival").await.expect("rival")),
        Some(("False".into(), "Conflict".into()))
    );

    // A new leader, then the holder goes: the rival is the only claim, Ready well before its
    // next resync (60 s).
    controller.stop().await;
    let controller = start(&client, settings(&ns));
    support::eventually(30, "the new leader reconciled the holder", || async {
        (controller.reconciles() >= 2).then_some(())
    })
    .await;
    api.delete("holder", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_until(&api, "rival", 20, "Ready=True (Synced)", |cf: &Chatflow| {
        ready(cf) == Some(("True".into(), "Synced".into()))
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn an_owned_definition_is_created_updated_on_change_and_deleted_with_delete_policy() {
    let (client, ns, api, _objects) = setup("cf-owned").await;
    let name = support::unique("fgtest-owned");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    create(&api, owned_doc("owned", &name, "Delete")).await;
    let cf = wait_ready(&api, "owned", "True", "Synced").await;
    let id = cf
        .status
        .as_ref()
        .and_then(|s| s.flowise_id.clone())
        .expect("id in status");
    assert!(cf.finalizers().iter().any(|f| f == "flowgate.io/cleanup"));
    let in_flowise = named_in_flowise(&name).await;
    assert_eq!(in_flowise.len(), 1, "exactly one chatflow of that name");
    assert_eq!(in_flowise[0].id, id);
    assert_eq!(in_flowise[0].flow_type, "AGENTFLOW");
    assert_eq!(
        in_flowise[0].flow_data_json(),
        Some(support::echo_flow_data())
    );
    assert_eq!(
        in_flowise[0].category.as_deref(),
        Some(format!("flowgate:{ns}/owned").as_str())
    );
    wait_for_event(&client, &ns, "owned", "Created").await;

    // Edit the definition: deployed and the reply text change.
    let mut flow = support::echo_flow_data();
    let edited = flow.to_string().replace("Echo: ", "Edited echo: ");
    flow = serde_json::from_str(&edited).expect("still JSON");
    let patch = json!({"spec": {"definition": {"deployed": true, "flowData": flow}}});
    api.patch("owned", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edited");
    let cf = wait_until(&api, "owned", 30, "generation 2 synced", |cf: &Chatflow| {
        let status = cf.status.clone().unwrap_or_default();
        status.observed_generation == Some(2) && status.deployed == Some(true)
    })
    .await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );
    let now = support::flowise()
        .get(&id)
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(now.deployed, Some(true));
    assert_eq!(now.flow_data_json(), Some(flow));
    assert_eq!(named_in_flowise(&name).await.len(), 1, "updated in place");
    wait_for_event(&client, &ns, "owned", "Updated").await;

    // A claim on it in Conflict keeps nothing from the deletion (it would come to hold it).
    create(&api, chatflow_doc("stray", json!({"flowiseId": id}))).await;
    wait_ready(&api, "stray", "False", "Conflict").await;
    api.delete("owned", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "owned").await;
    assert_eq!(
        support::flowise().get(&id).await.expect("read"),
        None,
        "deleted from Flowise"
    );
    wait_for_event(&client, &ns, "owned", "Deleted").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_retained_definition_stays_in_flowise_after_its_chatflow_is_deleted() {
    let (client, ns, api, _objects) = setup("cf-retain").await;
    let name = support::unique("fgtest-retain");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    create(&api, owned_doc("kept", &name, "Retain")).await;
    let cf = wait_ready(&api, "kept", "True", "Synced").await;
    // Its deletion deletes nothing in Flowise, so it waits for no controller.
    assert!(cf.finalizers().is_empty(), "{:?}", cf.finalizers());
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");
    api.delete("kept", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "kept").await;
    assert!(
        support::flowise().get(&id).await.expect("read").is_some(),
        "retained in Flowise"
    );

    // One that turns from Delete to Retain loses its finalizer, and is retained.
    let other = support::unique("fgtest-retain-later");
    let _cleanup_other = support::FlowiseCleanup(other.clone());
    create(&api, owned_doc("later", &other, "Delete")).await;
    let cf = wait_ready(&api, "later", "True", "Synced").await;
    assert_eq!(cf.finalizers(), [flowgate::crd::FINALIZER]);
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");
    api.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})),
    )
    .await
    .expect("patched");
    support::eventually(15, "the finalizer removed", || async {
        let cf = api.get("later").await.expect("read");
        cf.finalizers().is_empty().then_some(())
    })
    .await;
    controller.stop().await;
    // With no controller left, the deletion goes through, and Flowise keeps the chatflow.
    api.delete("later", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "later").await;
    assert!(support::flowise().get(&id).await.expect("read").is_some());
}

#[tokio::test]
async fn a_namesake_neither_rewrites_nor_deletes_a_retained_chatflow_adopted_since() {
    // A retained chatflow keeps its old owner's marker. Adopted by another Chatflow since, it is
    // theirs: a new Chatflow of the old owner's name, with another definition and
    // `deletionPolicy: Delete`, is in Conflict, writes nothing to it, and leaves it when deleted.
    let (client, ns, api, _objects) = setup("cf-namesake").await;
    let name = support::unique("fgtest-namesake");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));
    create(&api, owned_doc("bot", &name, "Retain")).await;
    let cf = wait_ready(&api, "bot", "True", "Synced").await;
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");
    api.delete("bot", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "bot").await;
    create(&api, chatflow_doc("adopter", json!({"flowiseId": id}))).await;
    wait_ready(&api, "adopter", "True", "Synced").await;
    let before = support::flowise()
        .get(&id)
        .await
        .expect("read")
        .expect("kept");

    create(&api, owned_doc("bot", &format!("{name} again"), "Delete")).await;
    let bot = wait_ready(&api, "bot", "False", "Conflict").await;
    let message = ready_message(&bot);
    assert!(
        message.contains(&format!("held by {ns}/adopter")),
        "{message}"
    );
    let after = support::flowise()
        .get(&id)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        (after.name.as_str(), after.flow_data_json()),
        (before.name.as_str(), before.flow_data_json()),
        "nothing written to it"
    );
    api.delete("bot", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "bot").await;
    assert!(
        support::flowise().get(&id).await.expect("read").is_some(),
        "not deleted from under its holder"
    );
    wait_ready(&api, "adopter", "True", "Synced").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_restart_or_a_lost_status_write_never_creates_a_second_chatflow() {
    let (client, ns, api, _objects) = setup("cf-once").await;
    let name = support::unique("fgtest-once");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let clear_status = |object: &'static str| {
        let api = api.clone();
        async move {
            api.patch_status(
                object,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": null})),
            )
            .await
            .expect("status cleared");
        }
    };

    let first = start(&client, settings(&ns));
    create(&api, owned_doc("once", &name, "Delete")).await;
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    let id = cf.status.and_then(|s| s.flowise_id).expect("id");

    // The status is lost while the controller runs: it finds its chatflow again.
    clear_status("once").await;
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );

    // A restart with the status lost as well.
    first.stop().await;
    clear_status("once").await;
    let second = start(&client, settings(&ns));
    let cf = wait_ready(&api, "once", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(id.as_str())
    );
    assert_eq!(named_in_flowise(&name).await.len(), 1, "still one chatflow");

    // A controller killed between creating in Flowise and writing status left this behind.
    let crashed_name = format!("{name}-crashed");
    let orphan = flowise_chatflow(&crashed_name, Some(&format!("flowgate:{ns}/crashed"))).await;
    create(&api, owned_doc("crashed", &crashed_name, "Delete")).await;
    let cf = wait_ready(&api, "crashed", "True", "Synced").await;
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(orphan.id.as_str())
    );
    assert_eq!(
        named_in_flowise(&crashed_name).await.len(),
        1,
        "the orphan was taken over"
    );
    second.stop().await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_touches_nothing_in_flowise_and_deletes_freely() {
    let (client, ns, api, _objects) = setup("cf-invalid").await;
    let name = support::unique("fgtest-invalid");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    let mut two_sources = owned_doc("two", &name, "Delete");
    two_sources["spec"]["flowiseName"] = json!("something");
    create(&api, two_sources).await;
    let mut no_nodes = owned_doc("no-nodes", &format!("{name}-nodes"), "Delete");
    no_nodes["spec"]["definition"]["flowData"] = json!({"edges": []});
    create(&api, no_nodes).await;

    let cf = wait_ready(&api, "two", "False", "InvalidSpec").await;
    let message = cf.conditions()[0].message.clone();
    assert!(message.contains("exactly one of"), "{message}");
    wait_ready(&api, "no-nodes", "False", "InvalidSpec").await;
    wait_for_event(&client, &ns, "two", "InvalidSpec").await;
    let created: Vec<_> = support::flowise()
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|c| c.name.starts_with(&name))
        .collect();
    assert!(
        created.is_empty(),
        "nothing created in Flowise: {created:?}"
    );

    // Cleanup is never blocked by validation, nor by a Flowise it never reached: with Flowise
    // unreachable an invalid Chatflow (`deletionPolicy: Delete`) still goes.
    api.delete("two", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "two").await;
    controller.stop().await;
    // Port 1: nothing listens there, and no other test can take it meanwhile (a port freed by
    // the test could be, and then hang instead of refusing).
    let controller = start_with(&client, settings(&ns), flowise_at("http://127.0.0.1:1"));
    api.delete("no-nodes", &DeleteParams::default())
        .await
        .expect("delete requested");
    wait_deleted(&api, "no-nodes").await;
    controller.stop().await;
}

#[tokio::test]
async fn quick_successive_edits_of_a_new_definition_create_one_chatflow() {
    let (client, ns, api, _objects) = setup("cf-quick").await;
    let name = support::unique("fgtest-quick");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));

    create(&api, owned_doc("quick", &name, "Delete")).await;
    for deployed in [true, false, true] {
        let patch = json!({"spec": {"definition": {"deployed": deployed}}});
        api.patch("quick", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("edited");
    }
    let cf = wait_until(&api, "quick", 30, "generation 4 synced", |cf: &Chatflow| {
        let status = cf.status.clone().unwrap_or_default();
        status.observed_generation == Some(4) && status.deployed == Some(true)
    })
    .await;
    let in_flowise = named_in_flowise(&name).await;
    assert_eq!(in_flowise.len(), 1, "one chatflow whatever the timing");
    assert_eq!(
        cf.status.and_then(|s| s.flowise_id).as_deref(),
        Some(in_flowise[0].id.as_str())
    );
    controller.stop().await;
}

#[tokio::test]
async fn a_cleanup_flowise_refuses_says_so_and_retain_lets_the_chatflow_go() {
    let (client, ns, api, _objects) = setup("cf-cleanup-fails").await;
    let name = support::unique("fgtest-cleanup-fails");
    let _cleanup = support::FlowiseCleanup(name.clone());
    let controller = start(&client, settings(&ns));
    create(&api, owned_doc("bot", &name, "Delete")).await;
    wait_ready(&api, "bot", "True", "Synced").await;
    controller.stop().await;

    // Flowise out of reach: the Chatflow stays, and says why and what to do.
    let controller = start_with(&client, settings(&ns), flowise_at("http://127.0.0.1:1"));
    api.delete("bot", &DeleteParams::default())
        .await
        .expect("delete requested");
    let notes = cleanup_failed_notes(&client, &ns, "bot").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("spec.deletionPolicy: Retain")),
        "{notes:?}"
    );
    assert!(
        api.get_opt("bot").await.expect("get").is_some(),
        "still there"
    );

    // The way out the Event names.
    api.patch(
        "bot",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})),
    )
    .await
    .expect("retained");
    wait_deleted(&api, "bot").await;
    assert_eq!(named_in_flowise(&name).await.len(), 1, "left in Flowise");
    controller.stop().await;
}

/// A Chatflow deleted while a create of its chatflow may still land in Flowise (sent, no answer:
/// `status.createSentAt`) keeps its finalizer until the create's window has passed, so that the
/// listing that deletes its chatflows comes after anything that could land.
#[tokio::test]
async fn a_chatflow_deleted_while_its_create_is_in_doubt_waits_for_the_window() {
    let (client, ns, api, _objects) = setup("cf-cleanup-doubt").await;
    let name = support::unique("fgtest-cleanup-doubt");
    let _cleanup = support::FlowiseCleanup(name.clone());
    // A window long enough for a controller just started to lead and reconcile within it on a
    // busy machine (the harness's 8 s was not, once in a full run).
    let mut settings = settings(&ns);
    settings.create_window = std::time::Duration::from_secs(20);
    let controller = start(&client, settings.clone());
    create(&api, owned_doc("bot", &name, "Delete")).await;
    wait_ready(&api, "bot", "True", "Synced").await;
    controller.stop().await;

    // As a create sent just now and not answered leaves it (its field manager's write).
    let sent = json!({"apiVersion": "flowgate.io/v1alpha1", "kind": "Chatflow",
                      "status": {"createSentAt": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}});
    api.patch_status(
        "bot",
        &PatchParams::apply("flowgate-create-intent").force(),
        &Patch::Apply(&sent),
    )
    .await
    .expect("createSentAt written");
    let controller = start(&client, settings);
    api.delete("bot", &DeleteParams::default())
        .await
        .expect("delete requested");
    let notes = cleanup_failed_notes(&client, &ns, "bot").await;
    assert!(
        notes.iter().any(|n| n.contains("may still land")),
        "{notes:?}"
    );
    assert!(
        api.get_opt("bot").await.expect("get").is_some(),
        "kept while the create is in doubt"
    );
    assert_eq!(named_in_flowise(&name).await.len(), 1);
    // The window passes: the chatflow is deleted, then the Chatflow.
    wait_deleted(&api, "bot").await;
    assert_eq!(named_in_flowise(&name).await.len(), 0, "deleted in Flowise");
    controller.stop().await;
}
