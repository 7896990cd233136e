//! Several Chatflows claiming one Flowise chatflow: only the one that holds it is served, and a
//! holder keeps it through an unreadable or invalid spec of its own.

use super::*;

#[test]
fn a_flowise_chatflow_claimed_twice_is_served_as_its_holders_only() {
    // A tenant in namespace "aa" names team-b's chatflow, in another case, and grants itself
    // access to it. team-b's Chatflow holds it (Ready, its id in status): only it is served.
    let mut res = team_a();
    let mut borrowed = (*chatflow("aa", "borrowed", &OTHER.to_uppercase())).clone();
    // Its status still names what it held before the edit (the controller has not seen it yet).
    borrowed.status.as_mut().expect("status").flowise_id = Some(FAQ.into());
    res.chatflows.push(Arc::new(borrowed));
    res.accesses.push(access(
        "aa",
        "mine",
        "  chatflows: [borrowed]\n  subjects: [{user: mallory}]\n",
    ));
    let snap = compile(&res);
    let served = snap.chatflow_by_flowise_id(OTHER).expect("served");
    assert_eq!(
        (served.rule.namespace.as_str(), served.rule.name.as_str()),
        ("team-b", "other-bot"),
        "the holder is served"
    );
    assert!(snap.chatflow_by_name("aa", "borrowed").is_none());
    let skipped: Vec<_> = snap
        .invalid
        .iter()
        .map(|i| (i.namespace.as_str(), i.name.as_str(), i.error.to_string()))
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!((skipped[0].0, skipped[0].1), ("aa", "borrowed"));
    assert!(
        skipped[0].2.contains("held by team-b/other-bot"),
        "{skipped:?}"
    );
    let mallory = ["mallory".to_string()];
    assert_eq!(role_on(&snap, &user(&mallory), OTHER), None, "no way in");
    // The others are untouched.
    let alice = ["alice@example.com".to_string()];
    assert_eq!(role_on(&snap, &user(&alice), SUPPORT), Some(Role::User));

    // The controller marked the newcomer Conflict: it still holds nothing.
    res.chatflows[3] = with_ready(chatflow("aa", "borrowed", OTHER), "Conflict");
    let snap = compile(&res);
    assert_eq!(
        snap.chatflow_by_flowise_id(OTHER)
            .map(|cf| cf.rule.namespace.as_str()),
        Some("team-b")
    );

    // The holder's spec was edited (pointed elsewhere and back, say): until the controller has
    // compared it, its status holds nothing, and neither claim is served.
    let mut edited = (*res.chatflows[2]).clone();
    edited.metadata.generation = Some(3);
    edited
        .status
        .as_mut()
        .expect("status")
        .conditions
        .iter_mut()
        .for_each(|c| c.observed_generation = Some(2));
    let held = std::mem::replace(&mut res.chatflows[2], Arc::new(edited));
    assert!(compile(&res).chatflow_by_flowise_id(OTHER).is_none());
    res.chatflows[2] = held;

    // Claims no one holds (the holder went; two made together): none is served.
    res.chatflows[2] = with_ready(res.chatflows[2].clone(), "Conflict");
    let snap = compile(&res);
    assert!(
        snap.chatflow_by_flowise_id(OTHER).is_none(),
        "neither is served"
    );
    assert_eq!(snap.invalid.len(), 2);
    assert!(
        snap.invalid
            .iter()
            .all(|i| i.error.to_string().contains("none of them is served")),
        "{:?}",
        snap.invalid
    );
}

/// `cf` as it reads after a CRD upgrade added a bound it breaks.
fn unreadable(cf: &Chatflow) -> Unreadable {
    let mut doc = serde_json::to_value(cf).expect("JSON");
    doc["spec"]["deletionPolicy"] = "Sometimes".into();
    let lenient: crate::crd::Lenient<Chatflow> = serde_json::from_value(doc).expect("parses");
    let crate::crd::Lenient::Unreadable(bad) = lenient else {
        panic!("read");
    };
    Unreadable {
        kind: "Chatflow",
        namespace: bad.metadata.namespace.clone().unwrap_or_default(),
        name: bad.metadata.name.clone().unwrap_or_default(),
        error: bad.error.clone(),
        claim: rules::unreadable_claim(&bad),
    }
}

#[test]
fn a_holder_that_cannot_be_read_keeps_its_chatflow_from_other_claims() {
    // team-b's Chatflow held OTHER; aa's claim was refused. Then team-b's turned unreadable.
    let mut res = team_a();
    let holder = res.chatflows.remove(2);
    res.unreadable.push(unreadable(&holder));
    res.chatflows
        .push(with_ready(chatflow("aa", "borrowed", OTHER), "Conflict"));
    let snap = compile(&res);
    assert!(
        snap.chatflow_by_flowise_id(OTHER).is_none(),
        "neither is served"
    );
    let borrowed = snap
        .invalid
        .iter()
        .find(|i| i.name == "borrowed")
        .expect("skipped");
    assert!(
        borrowed
            .error
            .to_string()
            .contains("held by team-b/other-bot"),
        "{}",
        borrowed.error
    );

    // One that never held it (Conflict) is a rival like any other: the holder keeps it.
    let mut res = team_a();
    res.unreadable.push(unreadable(&with_ready(
        chatflow("aa", "borrowed", OTHER),
        "Conflict",
    )));
    let snap = compile(&res);
    assert_eq!(
        snap.chatflow_by_flowise_id(OTHER)
            .map(|cf| cf.rule.namespace.as_str()),
        Some("team-b")
    );
}

/// `namespace/name` of the Chatflow served as Flowise chatflow OTHER, if any.
fn served(res: &Resources) -> Option<String> {
    compile(res)
        .chatflow_by_flowise_id(OTHER)
        .map(|cf| format!("{}/{}", cf.rule.namespace, cf.rule.name))
}

#[test]
fn a_holder_whose_spec_turns_invalid_keeps_its_chatflow_from_other_claims() {
    // team-b's Chatflow holds OTHER; aa's claim is in Conflict.
    let mut res = team_a();
    res.chatflows
        .push(with_ready(chatflow("aa", "borrowed", OTHER), "Conflict"));
    assert_eq!(served(&res).as_deref(), Some("team-b/other-bot"));

    // team-b's spec turns invalid (both flowiseId and flowiseName: the schema lets it through).
    // Until the controller has seen the edit, its status is for the spec before: it holds
    // nothing, and neither claim is served.
    let mut invalid = (*res.chatflows[2]).clone();
    invalid.spec.flowise_name = Some("other".into());
    invalid.metadata.generation = Some(2);
    invalid.status.as_mut().expect("status").conditions[0].observed_generation = Some(1);
    res.chatflows[2] = Arc::new(invalid.clone());
    assert_eq!(served(&res), None, "neither is served");

    // Reported InvalidSpec: it still holds OTHER, and aa's claim is still refused.
    invalid.status.as_mut().expect("status").conditions[0].observed_generation = Some(2);
    res.chatflows[2] = with_ready(Arc::new(invalid), "InvalidSpec");
    let snap = compile(&res);
    assert!(snap.chatflow_by_flowise_id(OTHER).is_none());
    let borrowed = snap.invalid.iter().find(|i| i.name == "borrowed");
    assert!(
        borrowed.is_some_and(|b| b.error.to_string().contains("held by team-b/other-bot")),
        "{:?}",
        snap.invalid
    );

    // One whose invalid spec names no flowiseId claims nothing, whatever its status still
    // records (kept from before it pointed at a name Flowise does not have): aa is served.
    let mut stale = (*res.chatflows[2]).clone();
    stale.spec.flowise_id = None;
    stale.spec.definition = Some(
        serde_json::from_value(serde_json::json!({"flowData": {"nodes": [], "edges": []}}))
            .expect("definition"),
    );
    assert!(
        rules::chatflow_source(&stale.spec).is_err(),
        "both a name and a definition"
    );
    res.chatflows[2] = Arc::new(stale);
    assert_eq!(served(&res).as_deref(), Some("aa/borrowed"));
}

#[test]
fn an_owned_definition_made_invalid_keeps_its_chatflow_from_other_claims() {
    // team-b's Chatflow owns a definition (no flowiseId): it holds OTHER, which it created and
    // its status records; aa's claim is in Conflict.
    let definition = |inputs: serde_json::Value| {
        serde_json::from_value(serde_json::json!({"flowData": {"edges": [], "nodes": [
            {"id": "pdf", "data": {"category": "Document Loaders", "inputs": inputs}}]}}))
        .expect("definition")
    };
    let mut res = team_a();
    let mut owner = (*res.chatflows[2]).clone();
    owner.spec.flowise_id = None;
    owner.spec.definition = Some(definition(serde_json::json!({})));
    res.chatflows[2] = Arc::new(owner.clone());
    res.chatflows
        .push(with_ready(chatflow("aa", "borrowed", OTHER), "Conflict"));
    assert_eq!(served(&res).as_deref(), Some("team-b/other-bot"));

    // A flowiseName added beside the definition (invalid: two sources), its status recording
    // the name the definition gave the chatflow: the status came from the definition, and is
    // still its claim.
    let mut renamed = owner.clone();
    renamed.spec.flowise_name = Some("Support Bot".into());
    renamed.status.as_mut().expect("status").flowise_name = Some("other-bot".into());
    assert!(rules::chatflow_source(&renamed.spec).is_err());
    res.chatflows[2] = with_ready(Arc::new(renamed), "InvalidSpec");
    assert_eq!(served(&res), None, "aa's claim is not served");

    // Its definition turns invalid (a file embedded in a node), reported so: still its claim.
    owner.spec.definition = Some(definition(serde_json::json!({
        "pdfFile": "data:application/pdf;base64,JVBERi0=,filename:a.pdf"
    })));
    assert!(rules::chatflow_source(&owner.spec).is_err());
    res.chatflows[2] = with_ready(Arc::new(owner), "InvalidSpec");
    assert_eq!(served(&res), None, "aa's claim is not served");
}
