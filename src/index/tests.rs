//! The index, specified with small YAML fixtures and a fixed clock.

use std::sync::Arc;

use jiff::Timestamp;

use super::*;

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> Arc<T> {
    Arc::new(serde_saphyr::from_str(yaml).expect("fixture is valid YAML"))
}

fn chatflow(ns: &str, name: &str, id: &str) -> Arc<Chatflow> {
    parse(&format!(
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{flowiseId: {id}}}\n\
         status: {{flowiseId: {id}, type: CHATFLOW, conditions: [{{type: Ready, status: 'True', reason: Synced, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}\n"
    ))
}

fn access(ns: &str, name: &str, body: &str) -> Arc<ChatflowAccess> {
    parse(&format!(
        "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
    ))
}

fn policy(ns: &str, name: &str, body: &str) -> Arc<CreditPolicy> {
    parse(&format!(
        "apiVersion: flowgate.io/v1alpha1\nkind: CreditPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
    ))
}

const SUPPORT: &str = "00000000-0000-4000-8000-000000000001";
const FAQ: &str = "00000000-0000-4000-8000-000000000002";
const OTHER: &str = "00000000-0000-4000-8000-000000000003";

fn team_a() -> Resources {
    Resources {
        chatflows: vec![
            chatflow("team-a", "support-bot", SUPPORT),
            chatflow("team-a", "faq-bot", FAQ),
            chatflow("team-b", "other-bot", OTHER),
        ],
        accesses: vec![access(
            "team-a",
            "support-team",
            "  chatflows: [support-bot]\n  subjects:\n  - user: alice@example.com\n  - group: support\n  - serviceAccount: {namespace: apps, name: chat-client}\n",
        )],
        policies: vec![],
        unreadable: vec![],
    }
}

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().expect("timestamp")
}

fn user(values: &[String]) -> Caller<'_> {
    Caller {
        users: values,
        groups: &[],
        service_account: None,
    }
}

fn role_on(snap: &Snapshot, caller: &Caller<'_>, id: &str) -> Option<Role> {
    let cf = snap.chatflow_by_flowise_id(id).expect("chatflow indexed");
    snap.role(caller, cf, now())
}

#[test]
fn a_user_named_in_an_access_rule_may_use_only_its_chatflows() {
    let snap = compile(&team_a());
    let alice = ["alice-sub".to_string(), "alice@example.com".to_string()];
    assert_eq!(role_on(&snap, &user(&alice), SUPPORT), Some(Role::User));
    assert_eq!(role_on(&snap, &user(&alice), FAQ), None);
    assert_eq!(role_on(&snap, &user(&alice), OTHER), None);
}

#[test]
fn an_address_is_matched_whatever_its_case_and_an_id_as_it_is() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "mixed",
        "  chatflows: [faq-bot]\n  subjects: [{user: Bob.Smith@Example.COM}, {user: User-ABC}]\n",
    ));
    let snap = compile(&res);
    // The identity names an address in lower case too (`claims::user_identity`).
    let bob = ["bob-sub".to_string(), "bob.smith@example.com".to_string()];
    assert_eq!(role_on(&snap, &user(&bob), FAQ), Some(Role::User));
    assert!(snap.grants_anything(&user(&bob)));
    let upper_alice = [
        "ALICE@EXAMPLE.COM".to_string(),
        "alice@example.com".to_string(),
    ];
    assert_eq!(
        role_on(&snap, &user(&upper_alice), SUPPORT),
        Some(Role::User)
    );
    let id = ["user-abc".to_string()];
    assert_eq!(
        role_on(&snap, &user(&id), FAQ),
        None,
        "an id is case-sensitive"
    );
    assert!(!snap.grants_anything(&user(&id)));
}

#[test]
fn there_is_no_implicit_access() {
    let snap = compile(&team_a());
    let bob = ["bob@example.com".to_string()];
    assert!(snap.visible(&user(&bob), now()).is_empty());
}

#[test]
fn groups_and_service_accounts_are_matched() {
    let snap = compile(&team_a());
    let groups = ["support".to_string()];
    let by_group = Caller {
        users: &[],
        groups: &groups,
        service_account: None,
    };
    assert_eq!(role_on(&snap, &by_group, SUPPORT), Some(Role::User));
    let by_sa = Caller {
        users: &[],
        groups: &[],
        service_account: Some("apps/chat-client"),
    };
    assert_eq!(role_on(&snap, &by_sa, SUPPORT), Some(Role::User));
    let other_sa = Caller {
        users: &[],
        groups: &[],
        service_account: Some("apps/intruder"),
    };
    assert_eq!(role_on(&snap, &other_sa, SUPPORT), None);
}

#[test]
fn wildcard_grants_cover_every_chatflow_of_the_namespace_only() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "leads",
        "  chatflows: ['*']\n  subjects: [{user: lead}]\n  role: Admin\n",
    ));
    let snap = compile(&res);
    let lead = ["lead".to_string()];
    assert_eq!(role_on(&snap, &user(&lead), SUPPORT), Some(Role::Admin));
    assert_eq!(role_on(&snap, &user(&lead), FAQ), Some(Role::Admin));
    assert_eq!(
        role_on(&snap, &user(&lead), OTHER),
        None,
        "references never cross namespaces"
    );
}

#[test]
fn the_strongest_live_role_wins_and_expired_access_grants_nothing() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "temp-admin",
        "  chatflows: [support-bot]\n  subjects: [{user: alice@example.com}]\n  role: Admin\n  expiresAt: '2026-06-01T11:00:00Z'\n",
    ));
    res.accesses.push(access(
        "team-a",
        "future-admin",
        "  chatflows: [faq-bot]\n  subjects: [{user: alice@example.com}]\n  role: Admin\n  expiresAt: '2026-06-01T13:00:00Z'\n",
    ));
    let snap = compile(&res);
    let alice = ["alice@example.com".to_string()];
    assert_eq!(
        role_on(&snap, &user(&alice), SUPPORT),
        Some(Role::User),
        "expired Admin falls back to User"
    );
    assert_eq!(role_on(&snap, &user(&alice), FAQ), Some(Role::Admin));
}

#[test]
fn grants_anything_knows_every_subject_some_live_object_names() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "paused",
        "  chatflows: [support-bot]\n  subjects: [{user: paused}]\n  suspended: true\n",
    ));
    res.accesses.push(access(
        "team-a",
        "dangling",
        "  chatflows: [no-such-bot]\n  subjects: [{user: dangling}]\n",
    ));
    res.accesses.push(access(
        "team-b",
        "everything",
        "  chatflows: ['*']\n  subjects: [{group: b-team}]\n",
    ));
    let snap = compile(&res);
    let names = |users: &[&str], groups: &[&str], sa: Option<&str>| {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        snap.grants_anything(&Caller {
            users: &users,
            groups: &groups,
            service_account: sa,
        })
    };
    assert!(names(&["sub-1", "alice@example.com"], &[], None));
    assert!(names(&[], &["support"], None));
    assert!(names(&[], &["x", "b-team"], None), "a '*' grant");
    assert!(names(&[], &[], Some("apps/chat-client")));
    assert!(!names(&["bob"], &["sales"], Some("apps/intruder")));
    assert!(
        !names(&["paused"], &[], None),
        "a suspended object grants nothing"
    );
    assert!(
        !names(&["dangling"], &[], None),
        "nor one naming no Chatflow"
    );
}

/// The admin API's objects are owned by the Chatflow they grant. Deleted and created again
/// under the same name, the Chatflow is another one: until Kubernetes collects the old
/// objects, their users are not granted the new one.
#[test]
fn an_access_owned_by_a_former_chatflow_of_the_name_grants_nothing_on_the_new_one() {
    let mut res = team_a();
    let mut new = (*res.chatflows[0]).clone();
    new.metadata.uid = Some("uid-2".into());
    res.chatflows[0] = Arc::new(new);
    let mut faq = (*res.chatflows[1]).clone();
    faq.metadata.uid = Some("uid-faq".into());
    res.chatflows[1] = Arc::new(faq);
    let owned_by = |uid: &str| {
        parse::<ChatflowAccess>(&format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: ChatflowAccess\n\
             metadata: {{name: admin-api-support-bot, namespace: team-a, ownerReferences: \
             [{{apiVersion: flowgate.io/v1alpha1, kind: Chatflow, name: support-bot, uid: {uid}}}]}}\n\
             spec: {{chatflows: [support-bot, faq-bot], subjects: [{{user: alice@example.com}}]}}\n"
        ))
    };
    let alice = ["alice@example.com".to_string()];
    res.accesses = vec![owned_by("uid-1")];
    let snap = compile(&res);
    assert_eq!(role_on(&snap, &user(&alice), SUPPORT), None);
    assert_eq!(
        role_on(&snap, &user(&alice), FAQ),
        Some(Role::User),
        "a chatflow it names that no owner names is granted as before"
    );
    res.accesses = vec![owned_by("uid-2")];
    let snap = compile(&res);
    assert_eq!(role_on(&snap, &user(&alice), SUPPORT), Some(Role::User));
}

#[test]
fn a_wildcard_given_twice_is_every_chatflow() {
    let mut res = team_a();
    res.accesses = vec![access(
        "team-a",
        "all",
        "  chatflows: ['*', '*']\n  subjects: [{user: alice}]\n",
    )];
    let snap = compile(&res);
    let alice = ["alice".to_string()];
    assert_eq!(role_on(&snap, &user(&alice), FAQ), Some(Role::User));
    assert_eq!(
        role_on(&snap, &user(&alice), OTHER),
        None,
        "its namespace's"
    );
}

#[test]
fn suspended_access_grants_nothing_but_stays_listed() {
    let mut res = team_a();
    res.accesses = vec![access(
        "team-a",
        "paused",
        "  chatflows: [support-bot]\n  subjects: [{user: alice}]\n  suspended: true\n",
    )];
    let snap = compile(&res);
    assert_eq!(role_on(&snap, &user(&["alice".to_string()]), SUPPORT), None);
    assert_eq!(snap.access_rules().len(), 1);
}

#[test]
fn an_access_being_deleted_grants_nothing_while_a_finalizer_keeps_it() {
    let mut res = team_a();
    let mut deleting = (*res.accesses[0]).clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    deleting.metadata.finalizers = Some(vec!["backup.example.com/keep".into()]);
    res.accesses = vec![Arc::new(deleting)];
    let snap = compile(&res);
    let alice = ["alice@example.com".to_string()];
    assert_eq!(role_on(&snap, &user(&alice), SUPPORT), None);
    assert!(snap.access_rules().is_empty(), "nor listed");
}

#[test]
fn a_chatflow_being_deleted_is_not_served() {
    let mut res = team_a();
    let mut deleting = (*res.chatflows[0]).clone();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    deleting.metadata.finalizers = Some(vec!["flowgate.io/cleanup".into()]);
    res.chatflows[0] = Arc::new(deleting);
    let snap = compile(&res);
    assert!(snap.chatflow_by_flowise_id(SUPPORT).is_none());
    assert!(snap.chatflow_by_name("team-a", "support-bot").is_none());
    assert!(snap.chatflow_by_flowise_id(FAQ).is_some(), "the others are");
}

#[test]
fn an_invalid_object_is_skipped_without_poisoning_the_rest() {
    let mut res = team_a();
    res.accesses.push(access(
        "team-a",
        "broken",
        "  chatflows: [faq-bot]\n  subjects: [{user: eve, group: admins}]\n",
    ));
    res.chatflows.push(parse(
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: two-sources, namespace: team-a}\n\
         spec: {flowiseId: 00000000-0000-4000-8000-000000000009, flowiseName: X}\n",
    ));
    res.policies.push(policy(
        "team-a",
        "bad-zone",
        "  chatflows: ['*']\n  budget: {credits: 5, period: Daily, timeZone: Mars/Olympus}\n",
    ));
    // Past the schema's maximum (a --resources-dir file): the ledger could not hold this cost.
    res.policies.push(policy(
        "team-a",
        "too-dear",
        "  chatflows: ['*']\n  budget: {credits: 5, period: Daily}\n  cost: {perPrediction: 9223372036854775808}\n",
    ));
    let snap = compile(&res);
    let alice = ["alice@example.com".to_string()];
    assert_eq!(
        role_on(&snap, &user(&alice), SUPPORT),
        Some(Role::User),
        "valid rules still apply"
    );
    assert_eq!(role_on(&snap, &user(&["eve".to_string()]), FAQ), None);
    let mut skipped: Vec<_> = snap
        .invalid
        .iter()
        .map(|i| (i.kind, i.name.as_str()))
        .collect();
    skipped.sort();
    assert_eq!(
        skipped,
        vec![
            ("Chatflow", "two-sources"),
            ("ChatflowAccess", "broken"),
            ("CreditPolicy", "bad-zone"),
            ("CreditPolicy", "too-dear")
        ]
    );
    let dear = snap.invalid.iter().find(|i| i.name == "too-dear");
    assert!(
        dear.is_some_and(|i| i.error.to_string().contains("cost.perPrediction")),
        "{dear:?}"
    );
    assert!(snap.chatflow_by_name("team-a", "two-sources").is_none());
}

#[test]
fn references_to_missing_chatflows_are_ignored_until_they_exist() {
    let mut res = team_a();
    res.accesses = vec![access(
        "team-a",
        "early",
        "  chatflows: [future-bot]\n  subjects: [{user: alice}]\n",
    )];
    let snap = compile(&res);
    assert!(
        snap.visible(&user(&["alice".to_string()]), now())
            .is_empty()
    );
    res.chatflows.push(chatflow(
        "team-a",
        "future-bot",
        "00000000-0000-4000-8000-00000000000a",
    ));
    let snap = compile(&res);
    assert_eq!(snap.visible(&user(&["alice".to_string()]), now()).len(), 1);
}

#[test]
fn flowise_ids_are_looked_up_case_insensitively() {
    let snap = compile(&team_a());
    assert!(
        snap.chatflow_by_flowise_id(&SUPPORT.to_ascii_uppercase())
            .is_some()
    );
    assert!(
        snap.chatflow_by_flowise_id("00000000-0000-4000-8000-0000000000ff")
            .is_none()
    );
}

#[test]
fn a_chatflow_without_a_ready_status_is_indexed_but_not_ready() {
    let res = Resources {
        chatflows: vec![parse(
            "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {name: new-bot, namespace: team-a}\nspec: {flowiseName: New Bot}\n",
        )],
        ..Default::default()
    };
    let snap = compile(&res);
    let cf = snap
        .chatflow_by_name("team-a", "new-bot")
        .expect("indexed by name");
    assert!(!cf.rule.ready);
    assert_eq!(cf.rule.flowise_id, None);
}

#[test]
fn a_ready_status_for_another_id_than_the_spec_names_is_not_ready() {
    // `flowiseId` edited from SUPPORT to FAQ; the controller has not checked FAQ yet.
    let edited = parse::<Chatflow>(&format!(
        "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: support-bot, namespace: team-a}}\n\
         spec: {{flowiseId: {FAQ}}}\n\
         status: {{flowiseId: {SUPPORT}, type: CHATFLOW, conditions: [{{type: Ready, status: 'True', reason: Synced, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}\n"
    ));
    let snap = compile(&Resources {
        chatflows: vec![edited],
        ..Default::default()
    });
    let cf = snap.chatflow_by_flowise_id(FAQ).expect("claims the new id");
    assert!(!cf.rule.ready, "the new id was never checked");
    // Checked (the status names it, in any case): ready.
    let checked = compile(&Resources {
        chatflows: vec![chatflow("team-a", "support-bot", &FAQ.to_ascii_uppercase())],
        ..Default::default()
    });
    assert!(
        checked
            .chatflow_by_flowise_id(FAQ)
            .expect("indexed")
            .rule
            .ready
    );
}

#[test]
fn a_status_id_found_by_an_older_flowise_name_is_not_used() {
    let adopted = |spec_name: &str| {
        parse::<Chatflow>(&format!(
            "apiVersion: flowgate.io/v1alpha1\nkind: Chatflow\nmetadata: {{name: bot, namespace: team-a}}\n\
             spec: {{flowiseName: {spec_name}}}\n\
             status:\n  flowiseId: 00000000-0000-4000-8000-00000000000A\n  flowiseName: Old Bot\n\
             \x20 conditions: [{{type: Ready, status: 'True', reason: Synced, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}}]\n"
        ))
    };
    for (spec_name, want) in [
        ("Old Bot", Some("00000000-0000-4000-8000-00000000000a")),
        ("New Bot", None),
    ] {
        let res = Resources {
            chatflows: vec![adopted(spec_name)],
            ..Default::default()
        };
        let snap = compile(&res);
        let cf = snap.chatflow_by_name("team-a", "bot").expect("indexed");
        assert_eq!(
            cf.rule.flowise_id.as_deref(),
            want,
            "spec names {spec_name}"
        );
    }
}

#[test]
fn ten_thousand_access_objects_compile() {
    let mut res = team_a();
    for i in 0..10_000 {
        res.accesses.push(access(
            "team-a",
            &format!("rule-{i}"),
            &format!("  chatflows: [support-bot]\n  subjects: [{{user: user-{i}}}]\n"),
        ));
    }
    let snap = compile(&res);
    assert_eq!(snap.access_rules().len(), 10_001);
    let u = ["user-9999".to_string()];
    assert_eq!(role_on(&snap, &user(&u), SUPPORT), Some(Role::User));
}

/// `cf` as the controller left it: Ready with `reason`, its Flowise id in status.
fn with_ready(cf: Arc<Chatflow>, reason: &str) -> Arc<Chatflow> {
    let mut cf = (*cf).clone();
    if let Some(status) = cf.status.as_mut() {
        status.conditions[0].reason = reason.into();
        status.conditions[0].status = if reason == "Synced" { "True" } else { "False" }.into();
    }
    Arc::new(cf)
}

#[test]
fn only_what_a_compile_newly_skips_is_logged() {
    let mut res = team_a();
    res.chatflows
        .push(with_ready(chatflow("aa", "borrowed", OTHER), "Conflict"));
    let first = compile(&res);
    let names = |skips: Vec<&Invalid>| -> Vec<String> {
        skips
            .iter()
            .map(|i| format!("{}/{}", i.namespace, i.name))
            .collect()
    };
    assert_eq!(names(newly_invalid(&[], &first.invalid)), ["aa/borrowed"]);
    // Compiled again for another change: nothing new.
    res.accesses.push(access(
        "team-a",
        "more",
        "  chatflows: [faq-bot]\n  subjects: [{user: bob}]\n",
    ));
    let second = compile(&res);
    assert!(newly_invalid(&first.invalid, &second.invalid).is_empty());
    // Another object skipped, and the same one for another reason: both new.
    res.accesses.push(access(
        "team-a",
        "broken",
        "  chatflows: [faq-bot]\n  subjects: [{user: bob}]\n  rateLimit: {requests: 0, per: Minute}\n",
    ));
    res.chatflows[2] = with_ready(res.chatflows[2].clone(), "Conflict");
    let third = compile(&res);
    let mut new = names(newly_invalid(&second.invalid, &third.invalid));
    new.sort();
    assert_eq!(new, ["aa/borrowed", "team-a/broken", "team-b/other-bot"]);
}

mod claims;
mod limits;
mod policies;

#[test]
fn a_definition_that_embeds_a_file_is_invalid() {
    let spec = |inputs: serde_json::Value| -> crate::crd::ChatflowSpec {
        serde_json::from_value(serde_json::json!({"definition": {"flowData": {
            "nodes": [{"id": "start", "data": {"inputs": {}}},
                      {"id": "pdf", "data": {"category": "Document Loaders", "inputs": inputs}}],
            "edges": []}}}))
        .expect("spec")
    };
    for inputs in [
        serde_json::json!({"pdfFile": "data:application/pdf;base64,JVBERi0=,filename:a.pdf"}),
        serde_json::json!({"txtFile": "[\"data:text/plain;base64,aGk=,filename:a.txt\"]"}),
        // As Flowise's test reads them: any case, a list with a stored file first, spaces.
        serde_json::json!({"pdfFile": "DATA:application/pdf;BASE64,JVBERi0=,filename:a.pdf"}),
        serde_json::json!({"files": "[\"FILE-STORAGE::a.pdf\", \"data:application/pdf;base64,JVBE,filename:b.pdf\"]"}),
        serde_json::json!({"files": "[ \"data:text/plain;base64,aGk=,filename:a.txt\"]"}),
    ] {
        let spec = spec(inputs.clone());
        let refused = rules::chatflow_source(&spec).err();
        assert!(
            matches!(&refused, Some(InvalidSpec::EmbeddedFile { node: 1, .. })),
            "{inputs}: {refused:?}"
        );
    }
    // What Flowise stores in its place, and a prompt that talks about data: URIs, are fine.
    for inputs in [
        serde_json::json!({"pdfFile": "FILE-STORAGE::[\"a.pdf\"]"}),
        serde_json::json!({"prompt": "Explain data: URIs and ;base64, encoding"}),
        serde_json::json!({"prompt": "data: URIs are\nlike ;base64, a line on"}),
        serde_json::json!({"files": "[\"data:text/plain;base64,aGk=\""}),
        serde_json::json!({"files": "[\"data:text/plain,not base64\"]"}),
    ] {
        let spec = spec(inputs.clone());
        assert!(rules::chatflow_source(&spec).is_ok(), "{inputs}");
    }
    // A file another kind of node takes (an OpenAPI toolkit's YAML): Flowise keeps it as it is.
    let tool: crate::crd::ChatflowSpec = serde_json::from_value(serde_json::json!({
        "definition": {"flowData": {"edges": [], "nodes": [{"id": "api", "data": {
            "category": "Tools",
            "inputs": {"yamlFile": "data:application/x-yaml;base64,b3BlbmFwaQ==,filename:api.yaml"}}}]}}}))
    .expect("spec");
    assert!(rules::chatflow_source(&tool).is_ok());
}
